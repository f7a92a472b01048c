"""EgoMCQ (``ego4d_mcq``): a query narration and five candidate Ego4D clips; accuracy overall and per question
type (type 1 inter-video, type 2 intra-video; LaViLa prints them swapped, both reported). Fractions."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lavila.evaluation.tasks.base import DataSettings, EvalContext, Option, Prepared, Task


class Ego4DMCQ(Task):
    name, aliases, title, flag_prefix = "ego4d_mcq", ("egomcq",), "EgoMCQ (Ego4D multiple choice)", "egomcq"
    metadata_help = "egomcq.json (EgoVLP's format)"
    root_help = "Ego4D video folder (chunked: <root>/<video_uid>.mp4/<start>.mp4)"
    options = (Option("egomcq_similarity", ("--egomcq-similarity",),
                      "cosine: normalised embeddings (default); dot: LaViLa's un-normalised dot products",
                      default="cosine", choices=("cosine", "dot")),)
    metric = "intra_video"

    def build(self, config: Mapping[str, Any], data: DataSettings) -> Prepared:
        from lavila.data.egomcq import EgoMCQDataset

        dataset = EgoMCQDataset(config["root"], config["metadata"], num_frames=data.num_frames,
                                chunk_len=data.chunk_len, crop_size=data.crop, norm=data.norm,
                                context_length=data.context_length, backend=data.backend)
        return Prepared(dataset, config, data)

    def evaluate(self, model: nn.Module, prepared: Prepared, loader: Any, ctx: EvalContext) -> dict[str, float]:
        from lavila.evaluation.benchmarks import evaluate_egomcq

        metrics, scores = evaluate_egomcq(model, loader, ctx.device, prepared.config.get("egomcq_similarity")
                                          or "cosine", ctx.autocast)
        prepared.outputs = {"scores": scores}
        return metrics
