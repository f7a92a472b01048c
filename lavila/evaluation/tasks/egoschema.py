"""EgoSchema zero-shot multiple choice (``egoschema``): predictions in the submission format, accuracy with
answers."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lavila.evaluation.tasks.base import DataSettings, EvalContext, Option, Prepared, Task


class EgoSchema(Task):
    name, title, flag_prefix = "egoschema", "EgoSchema multiple choice", "egoschema"
    metadata_help = "questions JSON (--egoschema-questions)"
    metadata_flags = ("--egoschema-questions",)
    root_help = "folder of <q_uid>.mp4"
    options = (Option("egoschema_answers", ("--egoschema-answers",),
                      "answers JSON {q_uid: index} to score locally (accuracy is tracked only with it)"),)
    metric = "accuracy"

    def build(self, config: Mapping[str, Any], data: DataSettings) -> Prepared:
        from lavila.data.egoschema import EgoSchemaDataset

        dataset = EgoSchemaDataset(config["root"], config["metadata"], num_frames=data.num_frames, crop_size=data.crop,
                                   norm=data.norm, context_length=data.context_length, backend=data.backend,
                                   fused_resize=data.fused_resize)
        return Prepared(dataset, config, data)

    def evaluate(self, model: nn.Module, prepared: Prepared, loader: Any, ctx: EvalContext) -> dict[str, float]:
        from lavila.evaluation import egoschema, zeroshot

        path = prepared.config.get("egoschema_answers")
        answers = egoschema.load_answers(path) if path else None
        return zeroshot.egoschema_task(model, loader, ctx.device, ctx.output_dir or ".", answers,
                                       f"egoschema_predictions_f{prepared.data.num_frames}", ctx.autocast)
