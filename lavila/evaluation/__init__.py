"""Evaluation: EK100 MIR metrics and relevancy, classification metrics, EgoSchema scoring, zero-shot loops."""
