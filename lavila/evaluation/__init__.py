"""Evaluation: EK100 MIR metrics (the relevancy matrix itself comes from lavila.data.relevancy), classification metrics,
EgoSchema scoring, zero-shot loops."""
