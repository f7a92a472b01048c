"""Ego4D video-text pretraining engine (reference ``main_lavila_pretrain.py``): CLIP InfoNCE over the global batch,
zero-shot evaluation every ``--eval-freq`` epochs on any registered task (:mod:`lavila.evaluation.tasks`:
``--dataset-val ek100_mir`` (default), ``ek100_cls``, ``egtea``, ``charades_ego``, ``ego4d_mcq``, ``egoschema``) when
``--val-metadata`` and ``--root-val`` are given; the task's options keep their ``eval_zeroshot.py`` flags
(``--relevancy-path``, ``--cls-vocab-csvs``, ``--egomcq-similarity``, ...). Validation runs at the model's frame
count (``--clip-length``).

Tracked ("best", ``checkpoint_best.pt``) metric: the task's (``avg_map`` for EK100 MIR, ``acc1`` for EK100 CLS
(percent), ``mean_acc`` for EGTEA, ``map`` for Charades-Ego, ``intra_video`` for EgoMCQ, ``accuracy`` for EgoSchema
with ``--egoschema-answers``; fractions unless said)."""
from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lavila.evaluation.tasks import TASKS, add_options, canonical_name, get_task, task_names
from lavila.train.engine_utils import (
    build_validation,
    check_training_items,
    data_settings,
    evaluate_task,
    get_checkpoint,
    init_pretrained,
    overrides_for,
    video_to_device,
)
from lavila.train.flags import add_reference_switches
from lavila.train.loop import Engine, TrainingError
from lavila.train.losses import ClipLoss


class PretrainEngine(Engine):
    name = "pretrain"
    description = "Ego4D video-language (CLIP) pretraining"
    metric = "avg_map"
    defaults = {"clip_length": 4, "epochs": 5, "warmup_epochs": 1, "batch_size": 16, "lr": 3e-5, "wd": 0.01}

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("pretraining")
        g.add_argument("--dataset", default="ego4d", choices=["ego4d"], help="training data")
        g.add_argument("--dataset-val", default="ek100_mir", choices=task_names(aliases=True),
                       help="zero-shot evaluation task, on --val-metadata / --root-val (default: ek100_mir)")
        g.add_argument("--root-val", default=None, help="video root of the evaluation set")
        g.add_argument("--train-metadata-aux", nargs="+", default=[], help="extra Ego4D metadata pickles")
        g.add_argument("--pretrain-clip-path", default=None,
                       help="CLIP ViT-B/16 weights (open_clip state_dict or OpenAI .pt) for the text tower with "
                            "--pretrain-zoo deit (DeiT/Vim visual init), as upstream")
        g.add_argument("--freeze-temperature", dest="freeze_temperature", action="store_true",
                       help="keep the temperature at 0.07 (default, as every release recipe)")
        g.add_argument("--no-freeze-temperature", dest="freeze_temperature", action="store_false",
                       help="learn the temperature (logit scale, clamped to [0, ln 100])")
        g.add_argument("--local-loss", action="store_true",
                       help="InfoNCE of this process's rows against all columns (less compute)")
        g.add_argument("--gather-with-grad", dest="gather_with_grad", action="store_true",
                       help="gradients through the gathered embeddings of every process (default)")
        g.add_argument("--no-gather-with-grad", dest="gather_with_grad", action="store_false",
                       help="gradients through this process's embeddings only")
        g.add_argument("--evaluate-task", default=None, choices=task_names(aliases=True),
                       help="task of --evaluate (default: --dataset-val)")
        parser.set_defaults(freeze_temperature=True, gather_with_grad=True)
        add_options(parser.add_argument_group("evaluation task options (see eval_zeroshot.py)"),
                    [o for task in TASKS.values() for o in task.options])
        add_reference_switches(parser, self.name)

    def prepare_args(self, args: argparse.Namespace, info: Any) -> None:
        args.dataset_val = canonical_name(args.evaluate_task or args.dataset_val)
        self.task = get_task(args.dataset_val)
        self.metric, self.metric_unit = self.task.metric, self.task.unit

    def build_datasets(self, args: argparse.Namespace):
        train = None
        if not args.evaluate:
            from lavila.data.ego4d import Ego4DPretrainDataset

            if not args.root or not args.train_metadata:
                raise TrainingError("pretraining needs --root (Ego4D video chunks) and --train-metadata (.pkl)")
            train = Ego4DPretrainDataset(args.root, args.train_metadata, args.train_metadata_aux, is_training=True,
                                         context_length=args.context_length, on_error=args.skip_policy,
                                         output="uint8", **data_settings(args).clip_kwargs())
            check_training_items(train, args)
        self.task = get_task(args.evaluate_task or args.dataset_val)
        self.validation = build_validation(self.task, args, args.root_val, args.val_metadata,
                                           {"root": "--root-val", "metadata": "--val-metadata"})
        if self.validation is None and args.evaluate:
            raise TrainingError("--evaluate needs --val-metadata and --root-val")
        return train, self.validation.dataset if self.validation is not None else None

    def build_model(self, args: argparse.Namespace) -> nn.Module:
        from lavila.models import create_model

        ckpt = get_checkpoint(args.resume, args) if (args.evaluate and args.resume) else None
        name, overrides = overrides_for(args, ckpt)
        overrides["freeze_temperature"] = args.freeze_temperature
        model = create_model(name, **overrides)
        if ckpt is None:
            init_pretrained(model, args)
        return model

    def build_criterion(self, args: argparse.Namespace) -> nn.Module:
        return ClipLoss(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad)

    def train_step(self, model: nn.Module, batch: Any, criterion: nn.Module, args: argparse.Namespace,
                   device: torch.device) -> dict[str, torch.Tensor]:
        frames, tokens = video_to_device(batch[0], device, args), batch[1].to(device, non_blocking=True)
        out = model(frames, tokens)
        return criterion(out["image_embed"], out["text_embed"], out["logit_scale"])

    def evaluate(self, model: nn.Module, loader: DataLoader, args: argparse.Namespace,
                 device: torch.device) -> dict[str, float]:
        return evaluate_task(self.task, self.validation, model, loader, args, device, finetuned=False)
