"""Action-classification fine-tuning engine (reference ``main_lavila_finetune_cls.py``): ``--dataset ek100_cls``
(default) or ``egtea``, the classification tasks of :mod:`lavila.evaluation.tasks`, which build the training and
validation sets and evaluate.

A ``VideoClassifier`` (dropout ``--dropout-rate`` + ``fc_cls``) over the visual tower of ``--pretrain-model``;
EK100 actions are the ``verb:noun`` pairs of the train + validation CSVs sorted as strings (3806 on EK100), kept in
``<output-dir>/actions.json``; EGTEA's 106 classes come from ``action_idx.txt``. EGTEA validation reads
``--num-clips`` windows per clip at ``--clip-stride`` (LaViLa: 10 at stride 2 for the final numbers) and averages
their logits; LaViLa's ``--num-crops 3`` takes its crops from the centre crop, i.e. three times the centre crop, so
one centre crop is taken here (the same average). Mixup/CutMix
over H x W (``--cutmix-variant reference``: the reference's T x H cut) with label smoothing; SGD or AdamW; ``lr``,
``lr-start``, ``lr-end`` scaled by global batch / 128 as in the reference. EK100 evaluation
(:func:`lavila.evaluation.classification.ek100_cls_metrics`, percent): ``acc1``, ``acc5``,
``mean_acc`` (over the classes present in the targets), ``mean_acc_cm`` (the reference's confusion-matrix variant),
and ``verb_``/``noun_`` ``acc1`` / ``acc5`` / ``mean_acc`` from the action probabilities marginalised over the
vocabulary; the tracked ("best", ``checkpoint_best.pt``) metric is the action top-1 ``acc1``, as the reference's
``best_acc1``. EGTEA (fractions): ``acc1``, ``mean_acc`` (tracked, LaViLa's), ``mean_acc_present``. Logged as
``test_<key>``. Training steps log ``acc1`` of the un-mixed labels (``train_acc1``, percent).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lavila.evaluation.tasks import get_task, task_names
from lavila.train.engine_utils import (
    add_finetune_task_options,
    add_pretrain_model_args,
    build_validation,
    check_task_data,
    evaluate_task,
    given,
    load_weights,
    overrides_for,
    starting_checkpoint,
    training_set,
    video_to_device,
)
from lavila.train.flags import add_reference_switches
from lavila.train.loop import Engine, TrainingError
from lavila.train.losses import ClassificationLoss
from lavila.train.mixup import VideoMixup


class ClassificationEngine(Engine):
    name = "finetune_classification"
    description = "action classification fine-tuning (EK100, EGTEA)"
    metric = "acc1"
    metric_unit = "percent"
    defaults = {"clip_length": 16, "epochs": 100, "warmup_epochs": 2, "batch_size": 32, "lr": 3e-3, "wd": 0.05,
                "drop_path_rate": 0.1}

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("classification fine-tuning")
        g.add_argument("--dataset", default="ek100_cls", choices=task_names("classification"),
                       help="training and evaluation data (default: ek100_cls)")
        add_pretrain_model_args(g, "pretrained CLIP or classifier")
        g.add_argument("--num-classes", type=int, default=None,
                       help="must match the classes (3806 on EK100, 106 on EGTEA)")
        g.add_argument("--num-crops", type=int, default=1,
                       help="accepted; no effect (one centre crop: the reference's EGTEA crops are all the centre "
                            "crop, its EK100 datasets ignore the flag)")
        g.add_argument("--num-clips", type=int, default=1,
                       help="EGTEA evaluation: windows per clip (EK100: no effect, as the reference)")
        g.add_argument("--dropout-rate", type=float, default=0.5, help="dropout before the classifier")
        g.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0: off)")
        g.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha (0: off)")
        g.add_argument("--cutmix-minmax", type=float, nargs=2, default=None,
                       help="CutMix box size range as fractions of the frame (default: from --cutmix alpha)")
        g.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixing a batch")
        g.add_argument("--mixup-switch-prob", type=float, default=0.5,
                       help="probability of CutMix instead of mixup when both are on")
        g.add_argument("--mixup-mode", default="batch", choices=["batch"], help="one mix per batch")
        g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
        g.add_argument("--no-lr-scaling", action="store_true", help="do not scale the lrs by global batch / 128")
        g.add_argument("--pickle-filename", default="", help="save probabilities and targets here (.npz)")
        add_reference_switches(parser, self.name)
        add_finetune_task_options(parser, "classification")

    def lr_values(self, args: argparse.Namespace, world_size: int) -> tuple[float, float, float]:
        scale = 1.0 if args.no_lr_scaling else args.batch_size * world_size / 128.0
        return args.lr * scale, args.lr_start * scale, args.lr_end * scale

    def prepare_args(self, args: argparse.Namespace, info: Any) -> None:
        self.task = get_task(args.dataset)
        self.metric, self.metric_unit = self.task.metric, self.task.unit
        self.flags = {"root": "--root", "metadata": "--val-metadata", "train_metadata": "--train-metadata",
                      **{key: "--" + dest.replace("_", "-") for dest, key in self.task.finetune_flags}}
        # an absent reference default evaluation CSV: the run goes without evaluation (and without its classes)
        val_metadata = args.val_metadata if given(args.val_metadata) else None
        config = {**self.task.config(args, args.root, val_metadata), "train_metadata": args.train_metadata,
                  **self.task.finetune_settings(args)}
        # the sets are checked before the classes are read from them
        if not args.evaluate:
            check_task_data(self.task, config, args, self.flags, training=True)
        check_task_data(self.task, config, args, self.flags, training=False)
        self.config = self.task.keep_classes(config, args.output_dir)
        self.classes = self.task.classes(self.config)
        if args.num_classes is not None and args.num_classes != len(self.classes):
            raise TrainingError(f"--num-classes {args.num_classes} does not match the {len(self.classes)} classes of "
                                f"{self.task.name}")
        self.num_classes = len(self.classes)
        self.mixup = None
        if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
            self.mixup = VideoMixup(args.mixup, args.cutmix, args.cutmix_minmax, args.mixup_prob,
                                    args.mixup_switch_prob, args.mixup_mode, args.smoothing, self.num_classes,
                                    cutmix_variant=args.cutmix_variant)
            if not self.mixup.active:
                self.mixup = None

    def build_datasets(self, args: argparse.Namespace):
        if not args.root:
            raise TrainingError(f"classification fine-tuning needs --root (the {self.task.name} videos)")
        train = training_set(self.task, self.config, args, "classification fine-tuning", checked=True)
        self.validation = build_validation(self.task, args, args.root, args.val_metadata, self.flags, checked=True,
                                           config=self.config)
        return train, self.validation.dataset if self.validation is not None else None

    def build_model(self, args: argparse.Namespace) -> nn.Module:
        from lavila.models import VideoClassifier, create_model
        from lavila.utils.checkpoint import is_classifier_state_dict

        ckpt = starting_checkpoint(args, "classification fine-tuning")
        name, overrides = overrides_for(args, ckpt)
        if is_classifier_state_dict(ckpt):
            model = create_model(name, num_classes=self.num_classes, **overrides)
            load_weights(model, ckpt)
        else:
            clip = create_model(name, **overrides)
            if ckpt is not None:
                load_weights(clip, ckpt)
            model = VideoClassifier.from_clip(clip, self.num_classes)
            model.config = {**clip.config, "num_classes": self.num_classes}
        model.dropout.p = args.dropout_rate
        return model

    def build_criterion(self, args: argparse.Namespace) -> nn.Module:
        return ClassificationLoss(smoothing=args.smoothing)

    def train_step(self, model: nn.Module, batch: Any, criterion: nn.Module, args: argparse.Namespace,
                   device: torch.device) -> dict[str, torch.Tensor]:
        frames, labels = video_to_device(batch[0], device, args), batch[1].to(device, non_blocking=True)
        target = labels
        if self.mixup is not None:
            frames, target = self.mixup(frames, labels)
        logits = model(frames)
        loss = criterion(logits, target)
        with torch.no_grad():
            acc1 = 100.0 * (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "acc1": acc1}

    def flags_in_use(self, args: argparse.Namespace) -> set[str]:
        return {dest for dest, _ in get_task(args.dataset).finetune_flags}

    def checkpoint_extra(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"actions" if self.task.name == "ek100_cls" else "classes": list(self.classes)}

    def evaluate(self, model: nn.Module, loader: DataLoader, args: argparse.Namespace,
                 device: torch.device) -> dict[str, float]:
        metrics = evaluate_task(self.task, self.validation, model, loader, args, device, finetuned=True)
        if args.pickle_filename:
            from lavila.utils.distributed import is_main_process

            if is_main_process():
                np.savez(Path(args.output_dir) / args.pickle_filename, **self.validation.outputs)
        return metrics
