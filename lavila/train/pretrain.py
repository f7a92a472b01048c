"""Ego4D video-text pretraining engine (reference ``main_lavila_pretrain.py``): CLIP InfoNCE over the global batch,
zero-shot EK100 MIR evaluation when ``--val-metadata`` and ``--root-val`` are given (EgoSchema with
``--evaluate-task egoschema``), both through :mod:`lavila.evaluation.zeroshot`.

Tracked ("best") metric: ``avg_map`` for EK100 MIR (fraction), ``accuracy`` for EgoSchema (fraction; only with
``--egoschema-answers``)."""
from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lavila.train.engine_utils import (
    check_annotations,
    check_training_items,
    evaluate_mir,
    get_checkpoint,
    init_pretrained,
    mir_relevancy,
    overrides_for,
    train_video_kwargs,
    video_dataset_kwargs,
    video_to_device,
)
from lavila.train.flags import absent_reference_default, add_reference_switches
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
        g.add_argument("--dataset-val", default="ek100_mir", choices=["ek100_mir", "egoschema"],
                       help="zero-shot evaluation task")
        g.add_argument("--root-val", default=None, help="video root of the evaluation set")
        g.add_argument("--train-metadata-aux", nargs="+", default=[], help="extra Ego4D metadata pickles")
        g.add_argument("--relevancy-path", default=None, help="EK100 MIR relevancy pickle (default: beside the CSV)")
        g.add_argument("--egoschema-answers", default=None, help="answers JSON to score EgoSchema locally")
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
        g.add_argument("--evaluate-task", default=None, choices=["ek100_mir", "egoschema"],
                       help="task of --evaluate (default: --dataset-val)")
        parser.set_defaults(freeze_temperature=True, gather_with_grad=True)
        add_reference_switches(parser, self.name)

    def prepare_args(self, args: argparse.Namespace, info: Any) -> None:
        if args.evaluate_task and args.evaluate_task != args.dataset_val:
            args.dataset_val = args.evaluate_task
        self.metric = "avg_map" if args.dataset_val == "ek100_mir" else "accuracy"

    def build_datasets(self, args: argparse.Namespace):
        common = video_dataset_kwargs(args)
        train = None
        if not args.evaluate:
            from lavila.data.ego4d import Ego4DPretrainDataset

            if not args.root or not args.train_metadata:
                raise TrainingError("pretraining needs --root (Ego4D video chunks) and --train-metadata (.pkl)")
            train = Ego4DPretrainDataset(args.root, args.train_metadata, args.train_metadata_aux, is_training=True,
                                         context_length=args.context_length, on_error=args.skip_policy,
                                         **train_video_kwargs(args))
            check_training_items(train, args)
        val = None
        if args.val_metadata and args.root_val and not (absent_reference_default(args.val_metadata)
                                                        or absent_reference_default(args.root_val)):
            if args.dataset_val == "ek100_mir":
                from lavila.data.ek100 import EK100MIRDataset

                check_annotations("mir", args.val_metadata, args.root_val, args, training=False,
                                  flag="--val-metadata", root_flag="--root-val")

                val = EK100MIRDataset(args.root_val, args.val_metadata, is_training=False,
                                      context_length=args.context_length, **common)
                self.relevancy = mir_relevancy(val, args.relevancy_path)
            else:
                from lavila.data.egoschema import EgoSchemaDataset

                val = EgoSchemaDataset(args.root_val, args.val_metadata, num_frames=args.clip_length,
                                       crop_size=args.input_size, norm=args.norm_style, backend=args.video_backend,
                                       context_length=args.context_length, fused_resize=args.fused_decode_crop)
        elif args.evaluate:
            raise TrainingError("--evaluate needs --val-metadata and --root-val")
        return train, val

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
        if args.dataset_val == "ek100_mir":
            return evaluate_mir(model, loader, self.relevancy, args, device)
        from lavila.evaluation import egoschema, zeroshot

        answers = egoschema.load_answers(args.egoschema_answers) if args.egoschema_answers else None
        return zeroshot.egoschema_task(model, loader, device, args.output_dir, answers)
