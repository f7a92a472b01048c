"""EK100 action-classification fine-tuning engine (reference ``main_lavila_finetune_cls.py``).

A ``VideoClassifier`` (dropout ``--dropout-rate`` + ``fc_cls``) over the visual tower of ``--pretrain-model``;
actions are the ``verb:noun`` pairs of the train + validation CSVs sorted as strings (3806 on EK100). Mixup/CutMix
over H x W (``--cutmix-variant reference``: the reference's T x H cut) with label smoothing; SGD or AdamW; ``lr``,
``lr-start``, ``lr-end`` scaled by global batch / 128 as in the reference. Evaluation
(:func:`lavila.evaluation.classification.ek100_cls_metrics`, percent): ``acc1``, ``acc5``,
``mean_acc`` (over the classes present in the targets), ``mean_acc_cm`` (the reference's confusion-matrix variant),
and ``verb_``/``noun_`` ``acc1`` / ``acc5`` / ``mean_acc`` from the action probabilities marginalised over the
vocabulary. Logged as ``test_<key>``; the tracked ("best", ``checkpoint_best.pt``) metric is the action top-1
``acc1``, as the reference's ``best_acc1``. Training steps log ``acc1`` of the un-mixed labels (``train_acc1``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lavila.train.engine_utils import (
    add_pretrain_model_args,
    check_annotations,
    load_weights,
    overrides_for,
    starting_checkpoint,
    train_video_kwargs,
    video_dataset_kwargs,
    video_to_device,
)
from lavila.train.flags import absent_reference_default, add_reference_switches
from lavila.train.loop import Engine, TrainingError
from lavila.train.losses import ClassificationLoss
from lavila.train.mixup import VideoMixup

ACTIONS_FILE = "actions.json"


class ClassificationEngine(Engine):
    name = "finetune_classification"
    description = "EK100 action classification fine-tuning"
    metric = "acc1"
    metric_unit = "percent"
    defaults = {"clip_length": 16, "epochs": 100, "warmup_epochs": 2, "batch_size": 32, "lr": 3e-3, "wd": 0.05,
                "drop_path_rate": 0.1}

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("classification fine-tuning")
        g.add_argument("--dataset", default="ek100_cls", choices=["ek100_cls"], help="training data")
        add_pretrain_model_args(g, "pretrained CLIP or classifier")
        g.add_argument("--actions", default=None,
                       help="action vocabulary JSON (default: built from --train-metadata + --val-metadata)")
        g.add_argument("--num-classes", type=int, default=None, help="must match the vocabulary (3806 on EK100)")
        g.add_argument("--num-crops", type=int, default=1, help="accepted; no effect (one crop, as the reference)")
        g.add_argument("--num-clips", type=int, default=1, help="accepted; no effect (one clip, as the reference)")
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
        g.add_argument("--pickle-filename", default="", help="save logits, probabilities and targets here (.npz)")
        add_reference_switches(parser, self.name)

    def lr_values(self, args: argparse.Namespace, world_size: int) -> tuple[float, float, float]:
        scale = 1.0 if args.no_lr_scaling else args.batch_size * world_size / 128.0
        return args.lr * scale, args.lr_start * scale, args.lr_end * scale

    def prepare_args(self, args: argparse.Namespace, info: Any) -> None:
        # the CSVs are checked before the vocabulary is read from them
        if not args.evaluate:
            check_annotations("cls", args.train_metadata, args.root, args, training=True, flag="--train-metadata")
        check_annotations("cls", args.val_metadata, args.root, args, training=False, flag="--val-metadata")
        self.vocab = self._vocabulary(args)
        if args.num_classes is not None and args.num_classes != len(self.vocab):
            raise TrainingError(f"--num-classes {args.num_classes} does not match the {len(self.vocab)} actions of "
                                "the vocabulary (train + validation CSVs or --actions)")
        self.num_classes = len(self.vocab)
        self.mixup = None
        if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
            self.mixup = VideoMixup(args.mixup, args.cutmix, args.cutmix_minmax, args.mixup_prob,
                                    args.mixup_switch_prob, args.mixup_mode, args.smoothing, self.num_classes,
                                    cutmix_variant=args.cutmix_variant)
            if not self.mixup.active:
                self.mixup = None

    def _vocabulary(self, args: argparse.Namespace):
        from lavila.data.ek100 import ActionVocabulary

        saved = Path(args.output_dir) / ACTIONS_FILE
        if args.actions:
            vocab = ActionVocabulary.load(args.actions)
        elif saved.is_file():
            vocab = ActionVocabulary.load(saved)
        else:
            csvs = [p for p in (args.train_metadata, args.val_metadata) if p and not absent_reference_default(p)]
            if not csvs:
                raise TrainingError("classification needs the action vocabulary: pass --train-metadata and "
                                    "--val-metadata (or --actions FILE.json)")
            vocab = ActionVocabulary.from_csvs(csvs)
        from lavila.utils.distributed import is_main_process

        if is_main_process():
            vocab.save(saved)
        return vocab

    def build_datasets(self, args: argparse.Namespace):
        from lavila.data.ek100 import EK100CLSDataset

        if not args.root:
            raise TrainingError("classification fine-tuning needs --root (EK100 video chunks)")
        common = video_dataset_kwargs(args)
        train = None
        if not args.evaluate:
            if not args.train_metadata:
                raise TrainingError("classification fine-tuning needs --train-metadata (EPIC_100_train.csv)")
            train = EK100CLSDataset(args.root, args.train_metadata, self.vocab, is_training=True,
                                    on_error=args.skip_policy, **train_video_kwargs(args))
        val = EK100CLSDataset(args.root, args.val_metadata, self.vocab, is_training=False, **common) \
            if args.val_metadata and not absent_reference_default(args.val_metadata) else None
        return train, val

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

    def checkpoint_extra(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"actions": list(self.vocab.actions)}

    def evaluate(self, model: nn.Module, loader: DataLoader, args: argparse.Namespace,
                 device: torch.device) -> dict[str, float]:
        from lavila.evaluation.classification import ek100_cls_metrics
        from lavila.evaluation.zeroshot import collect

        def step(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return model(batch[0].to(device, non_blocking=True)).float(), batch[1].to(device).long()

        empty = (torch.zeros(0, self.num_classes, device=device), torch.zeros(0, dtype=torch.long, device=device))
        logits, targets = collect(loader, step, len(loader.dataset), empty)
        probs = logits.softmax(-1)
        metrics = ek100_cls_metrics(probs.double().numpy(), targets.numpy(), self.vocab.act2verb,
                                    self.vocab.act2noun)
        if args.pickle_filename:
            from lavila.utils.distributed import is_main_process

            if is_main_process():
                np.savez(Path(args.output_dir) / args.pickle_filename, logits=logits.numpy(), probs=probs.numpy(),
                         targets=targets.numpy())
        return metrics
