"""Charades-Ego multi-label action recognition (``charades_ego``): untrimmed videos, 16 frames sparsely sampled over
the whole video, Charades mAP as LaViLa computes it (fractions). Fine-tuning (``main_finetune_retrieval.py
--dataset charades_ego``): InfoNCE on the trimmed clips of ``metadata_filtered_train.pkl``."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from lavila.evaluation.tasks.base import DataSettings, EvalContext, Option, Prepared, Task


class CharadesEgo(Task):
    name, title, flag_prefix = "charades_ego", "Charades-Ego multi-label recognition", "charades"
    metadata_help = "CharadesEgo_v1_test_only1st.csv (classes: Charades_v1_classes.txt beside it, or " \
                    "--charades-classes)"
    root_help = "video folder (<root>/<id>.mp4, e.g. CharadesEgo_v1_480/)"
    options = (
        Option("charades_classes", ("--charades-classes",), "Charades_v1_classes.txt (default: beside the CSV)"),
        Option("charades_use_template", ("--charades-use-template",),
               "ensemble the '#C C {}' and '#C {}' templates", default=False, action="store_true"),
    )
    metric = "map"
    protocol_frames = 16
    finetune = "retrieval"
    train_help = "metadata_filtered_train.pkl (trimmed clips: video id, start, end, narration)"
    train_loss = "infonce"

    def build(self, config: Mapping[str, Any], data: DataSettings) -> Prepared:
        from lavila.data.charades_ego import CharadesEgoDataset

        dataset = CharadesEgoDataset(config["root"], config["metadata"], config.get("charades_classes"),
                                     num_frames=data.num_frames, crop_size=data.crop, norm=data.norm,
                                     backend=data.backend)
        return Prepared(dataset, config, data)

    def evaluate(self, model: nn.Module, prepared: Prepared, loader: Any, ctx: EvalContext) -> dict[str, float]:
        from lavila.evaluation.benchmarks import LAVILA_TEMPLATES, benchmark_class_embeddings, evaluate_charades_ego

        templates = LAVILA_TEMPLATES if prepared.config.get("charades_use_template") else ("{}",)
        classes = benchmark_class_embeddings(model, prepared.dataset.classes, ctx.device, templates, ctx.autocast)
        # LaViLa's zero-shot script max-pools views and keeps one view's raw cosines; its fine-tuning validation
        # averages views and always applies the softmax (which changes the per-class ranking across videos)
        pooling, softmax_single = ("mean", True) if ctx.finetuned else ("max", False)
        metrics, scores = evaluate_charades_ego(model, loader, classes, ctx.device, ctx.autocast, pooling,
                                                softmax_single)
        prepared.outputs = {"scores": scores}
        return metrics

    def build_train(self, config: Mapping[str, Any], data: DataSettings, on_error: str | None) -> Dataset:
        from lavila.data.charades_ego import CharadesEgoClipDataset

        return CharadesEgoClipDataset(config["root"], config["train_metadata"], num_frames=data.num_frames,
                                      crop_size=data.crop, is_training=True, norm=data.norm,
                                      context_length=data.context_length, backend=data.backend, output="uint8",
                                      on_error=on_error)
