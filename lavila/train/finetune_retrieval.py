"""Video-text fine-tuning engine (reference ``main_lavila_finetune_mir.py`` / LaViLa's
``main_finetune_retrieval.py``): ``--dataset ek100_mir`` (default) or ``charades_ego``, the retrieval tasks of
:mod:`lavila.evaluation.tasks`, which build the training and validation sets and evaluate.

Starts from ``--pretrain-model`` (path, zoo name or URL; the temporal embedding is resized to ``--clip-length``);
the temperature stays frozen, as in the reference.

* EK100 MIR: the max-margin ranking loss (margin 0.2) weighted by the caption relevancy (``--mir-loss-weighting
  none`` is the reference, which ignores it); mAP / nDCG on the test split (fractions; tracked ``avg_map``).
* Charades-Ego: InfoNCE (CLIP loss over the global batch) on the trimmed clips of ``metadata_filtered_train.pkl``;
  Charades mAP on the untrimmed test videos with LaViLa's fine-tuning validation (views averaged, softmax;
  fraction; tracked ``map``).
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lavila.evaluation.tasks import get_task, task_names
from lavila.train.engine_utils import (
    add_finetune_task_options,
    add_pretrain_model_args,
    build_validation,
    evaluate_task,
    load_weights,
    overrides_for,
    starting_checkpoint,
    training_set,
    video_to_device,
)
from lavila.train.flags import add_reference_switches
from lavila.train.loop import Engine, TrainingError
from lavila.train.losses import ClipLoss, MaxMarginRankingLoss


class RetrievalEngine(Engine):
    name = "finetune_retrieval"
    description = "video-text fine-tuning (EK100 multi-instance retrieval, Charades-Ego)"
    metric = "avg_map"
    defaults = {"clip_length": 16, "epochs": 100, "warmup_epochs": 1, "batch_size": 16, "lr": 3e-5, "wd": 0.01}

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("retrieval fine-tuning")
        g.add_argument("--dataset", default="ek100_mir", choices=task_names("retrieval"),
                       help="training and evaluation data (default: ek100_mir)")
        add_pretrain_model_args(g, "pretrained CLIP")
        g.add_argument("--relevancy-path", default=None, help="test relevancy pickle (default: beside the CSV)")
        g.add_argument("--train-relevancy-path", default=None, help="train relevancy pickle (default: beside the CSV)")
        g.add_argument("--margin", type=float, default=0.2, help="max-margin ranking loss margin")
        g.add_argument("--mir-loss-weighting", default="relevancy", choices=["relevancy", "none"],
                       help="relevancy: margin scaled by the caption's relevancy; none: reference (ignores it)")
        g.add_argument("--local-loss", action="store_true",
                       help="InfoNCE (charades_ego) of this process's rows against all columns; EK100: no effect")
        g.add_argument("--gather-with-grad", dest="gather_with_grad", action="store_true",
                       help="gradients through every process's embeddings (default; the max-margin loss always "
                            "does)")
        g.add_argument("--no-gather-with-grad", dest="gather_with_grad", action="store_false",
                       help="InfoNCE (charades_ego): gradients through this process's embeddings only")
        parser.set_defaults(gather_with_grad=True)
        add_reference_switches(parser, self.name)
        add_finetune_task_options(parser, "retrieval")

    def prepare_args(self, args: argparse.Namespace, info: Any) -> None:
        self.task = get_task(args.dataset)
        self.metric, self.metric_unit = self.task.metric, self.task.unit

    def build_datasets(self, args: argparse.Namespace):
        self.task = get_task(args.dataset)
        if not args.root:
            raise TrainingError(f"fine-tuning needs --root (the {self.task.name} videos)")
        config = {**self.task.config(args, args.root, args.val_metadata), "train_metadata": args.train_metadata,
                  "train_relevancy_path": args.train_relevancy_path}
        train = training_set(self.task, config, args, f"{self.task.name} fine-tuning")
        self.validation = build_validation(self.task, args, args.root, args.val_metadata,
                                           {"root": "--root", "metadata": "--val-metadata"})
        return train, self.validation.dataset if self.validation is not None else None

    def build_model(self, args: argparse.Namespace) -> nn.Module:
        from lavila.models import create_model

        ckpt = starting_checkpoint(args, f"{args.dataset} fine-tuning")
        name, overrides = overrides_for(args, ckpt)
        # the max-margin loss never uses the temperature: a trainable one (a --no-freeze-temperature pretraining
        # checkpoint) would be a parameter without gradient, which DDP refuses (as the reference engine, frozen)
        overrides["freeze_temperature"] = True
        model = create_model(name, **overrides)
        if ckpt is not None:
            load_weights(model, ckpt)
        return model

    def build_criterion(self, args: argparse.Namespace) -> nn.Module:
        if get_task(args.dataset).train_loss == "infonce":
            return ClipLoss(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad)
        return MaxMarginRankingLoss(args.margin, use_relevancy=args.mir_loss_weighting == "relevancy")

    def train_step(self, model: nn.Module, batch: Any, criterion: nn.Module, args: argparse.Namespace,
                   device: torch.device) -> dict[str, torch.Tensor]:
        frames = video_to_device(batch[0], device, args)
        out = model(frames, batch[1].to(device, non_blocking=True))
        if isinstance(criterion, ClipLoss):  # (frames, tokens) items
            return criterion(out["image_embed"], out["text_embed"], out["logit_scale"])
        return criterion(out["image_embed"], out["text_embed"], batch[2].to(device, non_blocking=True))

    def evaluate(self, model: nn.Module, loader: DataLoader, args: argparse.Namespace,
                 device: torch.device) -> dict[str, float]:
        return evaluate_task(self.task, self.validation, model, loader, args, device, finetuned=True)
