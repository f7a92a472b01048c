"""EGTEA Gaze+ action recognition (``egtea``): zero-shot (LaViLa's protocol: 16 frames at stride 2, 10 clips x 3
crops, per-view cosines max-pooled) and fine-tuned classification (views' logits averaged). Fractions."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from lavila.data.egtea import ZEROSHOT_PROTOCOL as _PROTOCOL
from lavila.evaluation.tasks.base import (
    DataSettings,
    EvalContext,
    Option,
    Prepared,
    Task,
    TaskConfigError,
    is_dual_encoder,
)


class Egtea(Task):
    name, title, flag_prefix = "egtea", "EGTEA Gaze+ action recognition", "egtea"
    metadata_help = "test_split1.txt (class list: action_idx.txt beside it, or --egtea-classes)"
    root_help = "clip folder (<root>/<first three dash fields of the clip id>/<clip_id>.mp4)"
    options = (
        Option("egtea_classes", ("--egtea-classes",), "action_idx.txt (default: beside the split file)"),
        Option("egtea_stride", ("--egtea-stride",), "frame stride inside a window (default: 2)",
               default=_PROTOCOL["stride"], type=int),
        Option("egtea_num_clips", ("--egtea-num-clips",), "evenly spaced windows per clip (default: 10)",
               default=_PROTOCOL["num_clips"], type=int),
        Option("egtea_num_crops", ("--egtea-num-crops",), "square crops per window: 1 or 3 (default: 3)",
               default=_PROTOCOL["num_crops"], type=int, choices=(1, 3)),
        Option("egtea_use_template", ("--egtea-use-template",), "ensemble the '#C C {}' and '#C {}' templates",
               default=False, action="store_true"),
    )
    metric = "mean_acc"
    protocol_frames = _PROTOCOL["num_frames"]
    finetune = "classification"
    train_help = "train_split1.txt"
    # LaViLa's fine-tuning: --num-clips windows at --clip-stride; its validation transform centre-crops before
    # taking --num-crops spatial crops, so every crop is the centre crop: one crop (--num-crops has no effect)
    finetune_flags = (("num_clips", "egtea_num_clips"), ("clip_stride", "egtea_stride"))
    finetune_config = (("egtea_num_crops", 1),)

    def check(self, config: Mapping[str, Any], data: DataSettings, flags: Mapping[str, str]) -> None:
        """The views and stride at start-up (a bad --num-crops would otherwise end the first evaluation, after a
        training epoch, as an unreadable video). ``flags`` may name the option keys (the engine's --num-crops)."""
        self._check_sampling(config, flags, ("egtea_num_clips", "egtea_num_crops", "egtea_stride"))

    def check_train(self, config: Mapping[str, Any], data: DataSettings, flags: Mapping[str, str]) -> None:
        self._check_sampling(config, flags, ("egtea_stride",))

    @staticmethod
    def _check_sampling(config: Mapping[str, Any], flags: Mapping[str, str], keys: tuple[str, ...]) -> None:
        for key in keys:
            value, flag = config.get(key), flags.get(key, "--" + key.replace("_", "-"))
            if value is None:
                continue
            if key == "egtea_num_crops" and value not in (1, 3):
                raise TaskConfigError(f"{flag} must be 1 or 3 (square crops per window), got {value}")
            if int(value) < 1:
                raise TaskConfigError(f"{flag} must be at least 1, got {value}")

    def _dataset(self, config: Mapping[str, Any], data: DataSettings, split: str, training: bool,
                 on_error: str | None = None) -> Any:
        from lavila.data.egtea import EgteaDataset

        views = {} if training else {"num_clips": config.get("egtea_num_clips") or 1,
                                     "num_crops": config.get("egtea_num_crops") or 1}
        return EgteaDataset(config["root"], split, config.get("egtea_classes"), num_frames=data.num_frames,
                            stride=config.get("egtea_stride") or _PROTOCOL["stride"], crop_size=data.crop,
                            is_training=training, norm=data.norm, backend=data.backend, on_error=on_error,
                            output="uint8" if training else "float", **views)

    def build(self, config: Mapping[str, Any], data: DataSettings) -> Prepared:
        return Prepared(self._dataset(config, data, config["metadata"], False), config, data)

    def evaluate(self, model: nn.Module, prepared: Prepared, loader: Any, ctx: EvalContext) -> dict[str, float]:
        from lavila.evaluation.benchmarks import LAVILA_TEMPLATES, benchmark_class_embeddings, evaluate_egtea

        classes = None
        if is_dual_encoder(model):
            templates = LAVILA_TEMPLATES if prepared.config.get("egtea_use_template") else ("{}",)
            classes = benchmark_class_embeddings(model, prepared.dataset.classes, ctx.device, templates, ctx.autocast)
        metrics, scores = evaluate_egtea(model, loader, classes, ctx.device, ctx.autocast)
        prepared.outputs = {"probs" if classes is None else "scores": scores,
                            "targets": prepared.dataset.labels}
        return metrics

    def classes(self, config: Mapping[str, Any]) -> list[str]:
        import os

        from lavila.data.egtea import load_action_classes

        split = config.get("metadata") or config.get("train_metadata")
        path = config.get("egtea_classes") or os.path.join(os.path.dirname(str(split)), "action_idx.txt")
        return load_action_classes(path)[0]

    def build_train(self, config: Mapping[str, Any], data: DataSettings, on_error: str | None) -> Dataset:
        return self._dataset(config, data, config["train_metadata"], True, on_error)
