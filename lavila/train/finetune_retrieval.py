"""EK100 multi-instance retrieval fine-tuning engine (reference ``main_lavila_finetune_mir.py``).

Starts from ``--pretrain-model`` (path, zoo name or URL; the temporal embedding is resized to ``--clip-length``),
trains with the max-margin ranking loss (margin 0.2) weighted by the caption relevancy (``--mir-loss-weighting none``
is the reference, which ignores it) and evaluates mAP / nDCG (fractions; tracked metric ``avg_map``) on the test
split through :func:`lavila.evaluation.zeroshot.evaluate_mir`.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lavila.train.engine_utils import (
    add_pretrain_model_args,
    check_annotations,
    evaluate_mir,
    load_weights,
    mir_relevancy,
    overrides_for,
    starting_checkpoint,
    train_video_kwargs,
    video_dataset_kwargs,
    video_to_device,
)
from lavila.train.flags import absent_reference_default, add_reference_switches
from lavila.train.loop import Engine, TrainingError
from lavila.train.losses import MaxMarginRankingLoss


class RetrievalEngine(Engine):
    name = "finetune_retrieval"
    description = "EK100 multi-instance retrieval fine-tuning"
    metric = "avg_map"
    defaults = {"clip_length": 16, "epochs": 100, "warmup_epochs": 1, "batch_size": 16, "lr": 3e-5, "wd": 0.01}

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("retrieval fine-tuning")
        g.add_argument("--dataset", default="ek100_mir", choices=["ek100_mir"], help="training data")
        add_pretrain_model_args(g, "pretrained CLIP")
        g.add_argument("--relevancy-path", default=None, help="test relevancy pickle (default: beside the CSV)")
        g.add_argument("--train-relevancy-path", default=None, help="train relevancy pickle (default: beside the CSV)")
        g.add_argument("--margin", type=float, default=0.2, help="max-margin ranking loss margin")
        g.add_argument("--mir-loss-weighting", default="relevancy", choices=["relevancy", "none"],
                       help="relevancy: margin scaled by the caption's relevancy; none: reference (ignores it)")
        g.add_argument("--local-loss", action="store_true", help="accepted for compatibility")
        g.add_argument("--gather-with-grad", dest="gather_with_grad", action="store_true",
                       help="accepted for compatibility (the loss always gathers with gradients)")
        g.add_argument("--no-gather-with-grad", dest="gather_with_grad", action="store_false",
                       help="accepted for compatibility")
        parser.set_defaults(gather_with_grad=True)
        add_reference_switches(parser, self.name)

    def build_datasets(self, args: argparse.Namespace):
        from lavila.data.ek100 import EK100MIRDataset

        if not args.root:
            raise TrainingError("MIR fine-tuning needs --root (EK100 video chunks)")
        common = {**video_dataset_kwargs(args), "context_length": args.context_length}
        train = None
        if not args.evaluate:
            if not args.train_metadata:
                raise TrainingError("MIR fine-tuning needs --train-metadata (EPIC_100_retrieval_train.csv)")
            check_annotations("mir", args.train_metadata, args.root, args, training=True, flag="--train-metadata")
        check_annotations("mir", args.val_metadata, args.root, args, training=False, flag="--val-metadata")
        if not args.evaluate:
            train = EK100MIRDataset(args.root, args.train_metadata, is_training=True,
                                    relevancy_path=args.train_relevancy_path, on_error=args.skip_policy,
                                    **{**common, **train_video_kwargs(args)})
        val = None
        if args.val_metadata and not absent_reference_default(args.val_metadata):
            val = EK100MIRDataset(args.root, args.val_metadata, is_training=False, **common)
            self.relevancy = mir_relevancy(val, args.relevancy_path)
        return train, val

    def build_model(self, args: argparse.Namespace) -> nn.Module:
        from lavila.models import create_model

        ckpt = starting_checkpoint(args, "MIR fine-tuning")
        name, overrides = overrides_for(args, ckpt)
        # the max-margin loss never uses the temperature: a trainable one (a --no-freeze-temperature pretraining
        # checkpoint) would be a parameter without gradient, which DDP refuses (as the reference engine, frozen)
        overrides["freeze_temperature"] = True
        model = create_model(name, **overrides)
        if ckpt is not None:
            load_weights(model, ckpt)
        return model

    def build_criterion(self, args: argparse.Namespace) -> nn.Module:
        return MaxMarginRankingLoss(args.margin, use_relevancy=args.mir_loss_weighting == "relevancy")

    def train_step(self, model: nn.Module, batch: Any, criterion: nn.Module, args: argparse.Namespace,
                   device: torch.device) -> dict[str, torch.Tensor]:
        frames = video_to_device(batch[0], device, args)
        tokens, relevancy = (b.to(device, non_blocking=True) for b in batch[1:3])
        out = model(frames, tokens)
        return criterion(out["image_embed"], out["text_embed"], relevancy)

    def evaluate(self, model: nn.Module, loader: DataLoader, args: argparse.Namespace,
                 device: torch.device) -> dict[str, float]:
        return evaluate_mir(model, loader, self.relevancy, args, device)
