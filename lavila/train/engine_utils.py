"""Pieces the engines share: building a model from a checkpoint, pretrained initialisation (``--pretrain-zoo``),
a registered evaluation task's data and evaluate call (:mod:`lavila.evaluation.tasks`)."""
from __future__ import annotations

import argparse
import os
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lavila.data.transforms import NormalizeVideo
from lavila.train.loop import TrainingError, model_overrides
from lavila.train.run_spec import NO_CHECKPOINT
from lavila.train.run_spec import get_checkpoint as _get_checkpoint


@lru_cache(maxsize=8)
def _normalizer(norm: str, device: str) -> NormalizeVideo:
    return NormalizeVideo(norm).to(device)


def video_to_device(frames: torch.Tensor, device: torch.device, args: argparse.Namespace) -> torch.Tensor:
    """A training batch's clips on ``device``, normalised there when they arrive as uint8 (the same arithmetic as
    the datasets' float output, so both give the same values on CPU)."""
    frames = frames.to(device, non_blocking=True)
    if frames.dtype == torch.uint8:
        frames = _normalizer(args.norm_style, str(device))(frames)
    return frames


def check_training_items(dataset: Any, args: argparse.Namespace) -> None:
    """Start-up check of a pretraining set's items (:func:`lavila.data.checks.check_clip_items`)."""
    from lavila.data import checks

    try:
        checks.check_clip_items(dataset.items, ", ".join(dataset.metadata_paths), args.root, args.video_chunk_length)
    except checks.DataCheckError as exc:
        raise TrainingError(str(exc)) from None


def get_checkpoint(source: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load (once per process) a checkpoint given as a path, zoo name or URL."""
    return _get_checkpoint(source, getattr(args, "trust_checkpoint", False))


def add_pretrain_model_args(group: argparse._ArgumentGroup, what: str) -> None:
    """``--pretrain-model`` and ``--random-init`` of the fine-tuning engines."""
    group.add_argument("--pretrain-model", default="",
                       help=f"{what} checkpoint to start from: path, zoo name or URL; 'none' = --random-init "
                            "(default: none given, which is an error unless --random-init or --evaluate --resume)")
    group.add_argument("--random-init", action="store_true",
                       help="start from random weights of --model (small experiments, tests) instead of "
                            "--pretrain-model")


def random_init(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "random_init", False)) or str(args.pretrain_model).lower() == NO_CHECKPOINT


def starting_checkpoint(args: argparse.Namespace, task: str) -> dict[str, Any] | None:
    """The checkpoint a fine-tuning engine builds its model from: with ``--evaluate`` the ``--resume`` checkpoint,
    else ``--pretrain-model``; None with ``--random-init`` / ``--pretrain-model none`` (random weights)."""
    if args.evaluate and args.resume:
        return get_checkpoint(args.resume, args)
    if random_init(args):
        return None
    if not args.pretrain_model:
        raise TrainingError(f"{task} starts from a pretrained checkpoint: pass --pretrain-model "
                            "(path, zoo name or URL), or --random-init for random weights")
    return get_checkpoint(args.pretrain_model, args)


def overrides_for(args: argparse.Namespace, ckpt: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Model name and overrides: the checkpoint's description
    (:func:`lavila.models.checkpoint_spec.checkpoint_model_spec`: this project's stored config, or a released file's
    args) wins for the architecture; the flags set the frame count and drop path (the temporal embedding is resized
    to ``--clip-length`` when loading)."""
    overrides = model_overrides(args)
    if ckpt is None:
        return args.model, _effective_drop_path(args.model, overrides, args)
    from lavila.models.checkpoint_spec import checkpoint_model_spec

    name, stored = checkpoint_model_spec(ckpt)
    stored = {k: v for k, v in stored.items() if k not in ("num_frames", "drop_path_rate", "patch_dropout")}
    name = name or args.model
    return name, _effective_drop_path(name, {**overrides, **stored}, args)


def _effective_drop_path(name: str, overrides: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``--drop-path-scope reference``: no drop-path in TimeSformer / TimeMamba towers (as the reference builders)."""
    from lavila.models.registry import MODELS, effective_drop_path_rate

    if name in MODELS and "drop_path_rate" in overrides:
        overrides["drop_path_rate"] = effective_drop_path_rate(name, overrides["drop_path_rate"],
                                                               getattr(args, "drop_path_scope", "all"))
    return overrides


def load_weights(model: nn.Module, ckpt: dict[str, Any]) -> None:
    from lavila.train.checkpointing import load_model_weights

    try:
        load_model_weights(model, ckpt)
    except (KeyError, ValueError) as exc:
        raise TrainingError(f"checkpoint does not fit the model: {exc}") from exc


def _load_weights_file(path: str, args: argparse.Namespace) -> dict[str, Any]:
    from lavila.utils.checkpoint import load_checkpoint

    return load_checkpoint(path, trusted=args.trust_checkpoint)


def load_clip_state_dict(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """OpenAI / open_clip CLIP weights from a file: an open_clip ``state_dict`` (.pt/.bin) or OpenAI's TorchScript
    archive (``ViT-B-16.pt``, read with ``torch.jit.load``; its parameters have the same names)."""
    import zipfile

    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP weights file {path} does not exist")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            torchscript = any(n.endswith("constants.pkl") for n in zf.namelist())
        if torchscript:
            return torch.jit.load(path, map_location="cpu").state_dict()
    return _load_weights_file(path, args)


def _clip_state_dict(args: argparse.Namespace, path: str | None, flag: str) -> dict[str, Any]:
    """CLIP ViT-B/16 weights: the file ``path``, else ``ViT-B-16.pt`` put in the zoo dir, else open_clip's download
    (its own cache). A failed download names the URL, the path to put the file at and ``flag``."""
    from lavila import zoo

    if path:
        return load_clip_state_dict(path, args)
    manual = zoo.default_zoo_dir() / zoo.CLIP_VITB16_FILE
    if manual.is_file():
        return load_clip_state_dict(str(manual), args)
    try:
        import open_clip

        return open_clip.create_model("ViT-B-16", pretrained="openai").state_dict()
    except Exception as exc:
        raise TrainingError(
            f"--pretrain-zoo {args.pretrain_zoo} needs the OpenAI CLIP ViT-B/16 weights, which could not be "
            f"downloaded through open_clip ({type(exc).__name__}: {exc}). Download {zoo.CLIP_VITB16_URL} by hand and "
            f"put it at {manual}, or pass the file (OpenAI's ViT-B-16.pt or an open_clip state_dict) with {flag} "
            "FILE; or use --pretrain-zoo none for a random initialisation") from exc


def _image_state_dict(model: nn.Module, args: argparse.Namespace, path: str | None, flag: str) -> dict[str, Any]:
    """DeiT (ViT / TimeSformer) or Vim (ViViM) ImageNet weights for the visual tower: the file ``path``, else the
    file the reference builders use for this width, downloaded (:func:`lavila.zoo.resolve_image_weights`)."""
    if path:
        return _load_weights_file(path, args)
    from lavila import zoo

    vivim = type(model.visual).__name__ == "ViViM"
    table, family = (zoo.VIM_WEIGHTS, "Vim") if vivim else (zoo.DEIT_WEIGHTS, "DeiT")
    width = int(model.config["embed_dim"]) if hasattr(model, "config") else None
    if width not in table:
        raise TrainingError(f"no released {family} ImageNet weights for a {width}-wide visual tower "
                            f"(widths {sorted(table)}); pass the weights with {flag} FILE, or use --pretrain-zoo none")
    try:
        file = zoo.resolve_image_weights(table[width], flag)
    except zoo.ZooError as exc:
        raise TrainingError(str(exc)) from exc
    return _load_weights_file(str(file), args)


def _log_report(report: Any) -> None:
    from lavila.utils.distributed import print_main

    print_main(f"pretrained initialisation: {report}")


def init_pretrained(model: nn.Module, args: argparse.Namespace) -> Any:
    """``--pretrain-zoo`` initialisation of a fresh CLIP (``none``: random), as the reference builders; returns the
    :class:`lavila.models.released.LoadReport` (also logged), or None.

    ``openai`` / ``open_clip``: both towers from CLIP ViT-B/16 (``--pretrain-path``, else open_clip's download);
    for ViViM the visual tower comes from Vim-T/S instead (``--pretrain-vim-path``, else the Vim authors' Hugging
    Face repo). ``deit``: the visual tower from DeiT (ViT / TimeSformer) or Vim (ViViM) (``--pretrain-path``, else
    the reference's download) and the text tower from CLIP ViT-B/16 (``--pretrain-clip-path``, else open_clip's
    download). ``lavila``: a checkpoint in ``--pretrain-path``.
    """
    zoo_name = args.pretrain_zoo
    if zoo_name == "none":
        return None
    from lavila.models import convert

    path = args.pretrain_path
    vivim = type(model.visual).__name__ == "ViViM"
    if zoo_name in ("openai", "open_clip"):
        clip_sd = _clip_state_dict(args, path, "--pretrain-path")
        if vivim:  # the reference's ViViM builders: CLIP text + Vim ImageNet visual
            vim_sd = _image_state_dict(model, args, getattr(args, "pretrain_vim_path", None), "--pretrain-vim-path")
            report = convert.init_from_vim(model, vim_sd, clip_state_dict=clip_sd)
        else:
            report = convert.init_from_clip(model, clip_sd)
    elif zoo_name == "deit":
        state = _image_state_dict(model, args, path, "--pretrain-path")
        clip_sd = _clip_state_dict(args, getattr(args, "pretrain_clip_path", None), "--pretrain-clip-path")
        if vivim:
            report = convert.init_from_vim(model, state, clip_state_dict=clip_sd)
        else:
            report = convert.init_from_deit(model, state, clip_state_dict=clip_sd,
                                            patch_bias=getattr(args, "deit_patch_bias", "fold"))
    else:  # lavila
        if not path:
            raise TrainingError("--pretrain-zoo lavila needs --pretrain-path FILE; or use --pretrain-zoo none")
        load_weights(model, _load_weights_file(path, args))
        return None
    _log_report(report)
    return report


def add_finetune_task_options(parser: argparse.ArgumentParser, kind: str) -> None:
    """The options of every task a fine-tuning engine (``kind``) trains on, under their eval_zeroshot.py flags."""
    from lavila.evaluation.tasks import add_options, get_task, task_names

    for name in task_names(kind):
        add_options(parser.add_argument_group(f"{name} options (see eval_zeroshot.py)"),
                    get_task(name).finetune_options())


def data_settings(args: argparse.Namespace) -> Any:
    """The engines' :class:`lavila.evaluation.tasks.DataSettings` (the model's frames, crop, normalisation)."""
    from lavila.evaluation.tasks import DataSettings

    return DataSettings(args.clip_length, args.input_size, args.norm_style, args.context_length,
                        args.video_chunk_length, args.video_backend, args.fused_decode_crop)


def given(*paths: str | None) -> bool:
    """Every path is set and none is one of the reference's default paths that does not exist here."""
    from lavila.train.flags import absent_reference_default

    return all(p and not absent_reference_default(p) for p in paths)


def check_task_data(task: Any, config: dict[str, Any], args: argparse.Namespace, flags: dict[str, str],
                    training: bool) -> None:
    """Start-up check of a task's training (``config["train_metadata"]``) or evaluation set before any model is
    built or step run: a problem is one :class:`TrainingError` line naming the file, line and column. An absent
    reference default path (an evaluation set the run then goes without) is not checked."""
    from lavila.evaluation.tasks import TaskConfigError

    if not given(config.get("train_metadata" if training else "metadata")):
        return
    try:
        (task.check_train if training else task.check)(config, data_settings(args), flags)
    except TaskConfigError as exc:
        raise TrainingError(str(exc)) from None


def build_validation(task: Any, args: argparse.Namespace, root: str | None, metadata: str | None,
                     flags: dict[str, str], checked: bool = False, config: dict[str, Any] | None = None) -> Any:
    """A registered task's evaluation data (:class:`lavila.evaluation.tasks.Prepared`) on ``root`` / ``metadata``,
    checked first unless ``checked`` (:func:`check_task_data`); None without them or when they are the reference's
    absent default paths. ``config``: task settings the engine fixed itself (they win over the flags)."""
    if not given(root, metadata):
        return None
    task_config = {**task.config(args, root, metadata), **(config or {})}
    if not checked:
        check_task_data(task, task_config, args, flags, training=False)
    return task.build(task_config, data_settings(args))


def training_set(task: Any, config: dict[str, Any], args: argparse.Namespace, what: str,
                 checked: bool = False) -> Any:
    """A registered task's fine-tuning set on ``--train-metadata`` (None with ``--evaluate``), checked first unless
    ``checked``."""
    if args.evaluate:
        return None
    if not args.train_metadata:
        raise TrainingError(f"{what} needs --train-metadata ({task.train_help})")
    if not checked:
        check_task_data(task, config, args, {"root": "--root", "train_metadata": "--train-metadata"}, training=True)
    return task.build_train(config, data_settings(args), args.skip_policy)


def evaluate_task(task: Any, prepared: Any, model: nn.Module, loader: DataLoader, args: argparse.Namespace,
                  device: torch.device, finetuned: bool) -> dict[str, float]:
    """A registered task's metrics through its evaluate function (``loader``: the training loop's evaluation
    loader, a :func:`lavila.evaluation.zeroshot.sharded_loader`; autocast is the loop's)."""
    from lavila.evaluation.tasks import EvalContext

    return task.evaluate(model, prepared, loader, EvalContext(device, None, args.output_dir, finetuned=finetuned))
