"""What an evaluation task declares, and the pieces every entry script uses to run one (see ``__init__.py`` for the
registry and docs/ARCHITECTURE.md "How to add a benchmark").

A task has:

* its name (LaViLa's), aliases, a flag prefix for ``eval_zeroshot.py`` (``--<prefix>-root``,
  ``--<prefix>-metadata``) and its :class:`Option` s (same flag on every entry script, one config key each);
* :meth:`Task.build`: the evaluation dataset (and whatever the evaluation needs besides, e.g. the EK100 relevancy)
  from a config (``root``, ``metadata``, option keys) and the model's :class:`DataSettings`;
* :meth:`Task.evaluate`: the metrics of a model on that data (a CLIP zero-shot, or a fine-tuned classifier for the
  classification tasks), over a :func:`lavila.evaluation.zeroshot.sharded_loader`;
* the metric tracked for "best checkpoint" and its unit; the rows of its printed table;
* optionally the fine-tuning side (``finetune``: the engine that trains on it, :meth:`Task.build_train`).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = ["TaskConfigError", "Option", "DataSettings", "EvalContext", "Prepared", "Task", "add_options",
           "is_dual_encoder", "with_num_frames"]


class TaskConfigError(ValueError):
    """A task given without what it needs (reported by the entry scripts as one ``error:`` line)."""


@dataclass(frozen=True)
class Option:
    """One setting of a task: ``key`` in the task config, its flag(s) (the first is the name shown in errors)."""

    key: str
    flags: tuple[str, ...]
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = None
    nargs: str | None = None
    choices: tuple[Any, ...] | None = None
    action: str | None = None

    def add_to(self, group: Any) -> None:
        kwargs: dict[str, Any] = {"dest": self.key, "default": self.default, "help": self.help}
        if self.action:
            kwargs["action"] = self.action
        else:
            kwargs.update({k: v for k, v in (("type", self.type), ("nargs", self.nargs), ("choices", self.choices))
                           if v is not None})
        group.add_argument(*self.flags, **kwargs)


@dataclass(frozen=True)
class DataSettings:
    """How the model wants its input: frames per clip, crop, normalisation, text length; how videos are stored."""

    num_frames: int
    crop: int = 224
    norm: str = "openai"
    context_length: int = 77
    chunk_len: float = 15.0
    backend: str = "auto"
    fused_resize: bool = False

    def clip_kwargs(self) -> dict[str, Any]:
        """Keywords of an EK100 / Ego4D-layout ``ClipDataset`` (chunked videos)."""
        return {"num_frames": self.num_frames, "chunk_len": self.chunk_len, "crop_size": self.crop,
                "norm": self.norm, "backend": self.backend, "fused_resize": self.fused_resize}


@dataclass
class EvalContext:
    """Where and how an evaluation runs. ``finetuned``: validation of a fine-tuning run (LaViLa's fine-tuning
    engines pool views differently from its zero-shot script, see the Charades-Ego task)."""

    device: torch.device
    autocast: Any = None
    output_dir: str | None = None
    text_batch_size: int = 256
    finetuned: bool = False


@dataclass
class Prepared:
    """A task's built evaluation data: the dataset and what the evaluation needs besides (``extra``); ``outputs``
    holds the last evaluation's per-sample scores / targets (the CLS engine's ``--pickle-filename``)."""

    dataset: Dataset
    config: Mapping[str, Any]
    data: DataSettings
    extra: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


def is_dual_encoder(model: nn.Module) -> bool:
    """A CLIP (video and text towers) rather than a classifier."""
    return hasattr(model, "encode_text")


def with_num_frames(model: nn.Module, num_frames: int) -> nn.Module:
    """``model`` itself when it takes ``num_frames`` frames, else a copy built for ``num_frames`` with the temporal
    embedding resized (as a checkpoint is loaded at another clip length)."""
    if int(getattr(model, "num_frames", num_frames)) == num_frames:
        return model
    from lavila.models import create_model
    from lavila.models.registry import OVERRIDES
    from lavila.models.released import load_released_state_dict

    config = dict(getattr(model, "config", None) or {})
    if "name" not in config:
        raise TaskConfigError(f"this model takes {model.num_frames} frames and cannot be rebuilt for {num_frames}; "
                              f"pass the task's clip length {model.num_frames}")
    overrides = {k: config[k] for k in OVERRIDES if k in config and k != "num_frames"}
    copy = create_model(config["name"], num_frames=num_frames, **overrides)
    load_released_state_dict(copy, model.state_dict())
    param = next(model.parameters(), None)
    return copy.to(param.device if param is not None else "cpu").eval()


class Task:
    """One benchmark. Subclasses set the attributes and override :meth:`build` and :meth:`evaluate`."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    title: str = ""
    flag_prefix: str = ""
    metadata_help: str = ""
    root_help: str = ""
    metadata_flags: tuple[str, ...] = ()  # extra spellings of --<prefix>-metadata (e.g. --egoschema-questions)
    root_fallback: str | None = None  # config key of another task's root used when this one's is not given
    options: tuple[Option, ...] = ()
    metric: str = ""  # tracked for checkpoint_best.pt (higher is better)
    unit: str = "fraction"  # of the metrics: "fraction" or "percent"
    protocol_frames: int | None = None  # the benchmark's frame count in eval_zeroshot.py (None: the model's)
    finetune: str | None = None  # "classification" / "retrieval": the engine that fine-tunes on it
    train_help: str = ""  # what --train-metadata is when fine-tuning on it
    train_loss: str = "max_margin"  # retrieval fine-tuning loss: "max_margin" (EK100 MIR) or "infonce"
    finetune_flags: tuple[tuple[str, str], ...] = ()  # (engine flag dest, option key): engine flags it reads
    finetune_config: tuple[tuple[str, Any], ...] = ()  # (option key, value) fixed when fine-tuning

    # ---- flags ---------------------------------------------------------------------------------------------------
    @property
    def root_key(self) -> str:
        return f"{self.flag_prefix}_root"

    @property
    def metadata_key(self) -> str:
        return f"{self.flag_prefix}_metadata"

    def add_eval_flags(self, parser: argparse.ArgumentParser) -> None:
        """``eval_zeroshot.py``'s flags of this task: root, metadata, clip length, options."""
        g = parser.add_argument_group(f"{self.name} ({self.title})")
        g.add_argument(f"--{self.flag_prefix}-root", dest=self.root_key, default=None, help=self.root_help)
        g.add_argument(f"--{self.flag_prefix}-metadata", *self.metadata_flags, dest=self.metadata_key, default=None,
                       help=self.metadata_help)
        frames = f"default: {self.protocol_frames} (the benchmark's protocol)" if self.protocol_frames else \
            "default: --clip-length, else the model's"
        g.add_argument(f"--{self.flag_prefix}-clip-length", dest=f"{self.flag_prefix}_clip_length", type=int,
                       default=None, help=f"frames per clip ({frames})")
        add_options(g, self.options)

    def config(self, args: argparse.Namespace, root: str | None, metadata: str | None) -> dict[str, Any]:
        """The task config from parsed flags (``root`` / ``metadata`` as the entry script names them)."""
        return {"root": root, "metadata": metadata, **{o.key: getattr(args, o.key, o.default) for o in self.options}}

    # ---- data and evaluation -------------------------------------------------------------------------------------
    def check(self, config: Mapping[str, Any], data: DataSettings, flags: Mapping[str, str]) -> None:
        """Start-up checks of the annotations and videos before any model is built (``flags``: the entry script's
        names of ``root`` / ``metadata`` for the messages). Default: none beyond what :meth:`build` reads."""

    def build(self, config: Mapping[str, Any], data: DataSettings) -> Prepared:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, prepared: Prepared, loader: Any, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def table(self, metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(metric, shown value) rows of the printed table."""
        return [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items()]

    # ---- fine-tuning ---------------------------------------------------------------------------------------------
    def finetune_options(self) -> list[Option]:
        """The options a fine-tuning engine adds: those its own flags or :attr:`finetune_config` do not set."""
        fixed = {key for _, key in self.finetune_flags} | {key for key, _ in self.finetune_config}
        return [o for o in self.options if o.key not in fixed]

    def finetune_settings(self, args: argparse.Namespace) -> dict[str, Any]:
        """Config values a fine-tuning run takes from the engine's flags and :attr:`finetune_config`."""
        return {**{key: getattr(args, dest) for dest, key in self.finetune_flags}, **dict(self.finetune_config)}

    def check_train(self, config: Mapping[str, Any], data: DataSettings, flags: Mapping[str, str]) -> None:
        """Start-up checks of the fine-tuning set (``config["train_metadata"]``). Default: none beyond reading it."""

    def classes(self, config: Mapping[str, Any]) -> list[str]:
        """The classifier's classes in output order (classification tasks)."""
        raise NotImplementedError(f"{self.name} is not a classification task")

    def keep_classes(self, config: Mapping[str, Any], output_dir: str) -> dict[str, Any]:
        """``config`` with the class list a run must keep across relaunches fixed (default: unchanged)."""
        return dict(config)

    def build_train(self, config: Mapping[str, Any], data: DataSettings, on_error: str | None) -> Dataset:
        """The fine-tuning set on ``config["train_metadata"]`` (uint8 clips, normalised on the device)."""
        raise NotImplementedError(f"{self.name} has no fine-tuning set")

def add_options(group: Any, options: Sequence[Option]) -> None:
    """Add ``options`` to a parser group, skipping flags the parser already has (the engines' own)."""
    existing = getattr(group, "_option_string_actions", {})
    for option in options:
        if not any(flag in existing for flag in option.flags):
            option.add_to(group)
