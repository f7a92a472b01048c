"""Zero-shot evaluation of a registry model or checkpoint on the registered tasks (``lavila.evaluation.tasks``):
EK100 MIR, EK100 CLS, EGTEA, Charades-Ego, EgoMCQ, EgoSchema.

    python eval_zeroshot.py --resume clip_timesformer_vanilla_base_ego4d4m_bs512_f4.pt \\
        --mir-root videos/epic --mir-metadata EPIC_100_retrieval_test.csv --output-dir out/

The checkpoint may be a local path, a URL or a zoo name (``lavila.zoo``); without one, ``--model`` builds a randomly
initialised registry model (``--model-overrides`` for tiny test sizes). Frame count, crop size, normalisation and the
tokenizer's context length come from the checkpoint's stored config unless given as flags. A task runs when its
metadata flag (``--<prefix>-metadata``) is given (or pick them with ``--tasks``); EGTEA and Charades-Ego use their
protocol's 16 frames (the model's temporal embedding resized) unless ``--<prefix>-clip-length`` / ``--clip-length``
says otherwise. Runs the same under ``torchrun`` (each rank encodes a shard; identical numbers). Prints a table,
writes ``<output-dir>/zeroshot_metrics.json`` (one entry per task, by its canonical name), EgoSchema predictions in
the official submission format, and with ``--save-similarity`` the MIR similarity matrix (``mir_similarity.npy``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from lavila.config import ArgumentParser, config_yaml, parse_args
from lavila.evaluation.tasks import TASKS, DataSettings, EvalContext, Task, canonical_name, task_names, with_num_frames
from lavila.utils import distributed as du


class EvalError(ValueError):
    """A flag combination this script cannot run (reported as one ``error:`` line)."""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--resume", "--checkpoint", dest="resume", default="",
                   help="checkpoint: local path, URL or zoo name (see docs/MODEL_ZOO.md)")
    m.add_argument("--model", default=None, help="registry name (default: the checkpoint's)")
    m.add_argument("--model-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="named-config overrides for a model built without a checkpoint, e.g. depth=1 embed_dim=32")
    m.add_argument("--trust-checkpoint", action="store_true", help="full unpickling (trusted files only)")
    m.add_argument("--clip-length", "--num-frames", type=int, default=None,
                   help="frames per clip (default: the checkpoint's)")
    m.add_argument("--input-size", type=int, default=None, help="crop size (default: the model's image size)")
    m.add_argument("--norm-style", default=None, choices=["openai", "timm"], help="default: the checkpoint's/openai")
    m.add_argument("--context-length", type=int, default=None, help="default: the model's")
    p.add_argument("--tasks", nargs="+", choices=task_names(aliases=True), default=None,
                   help="tasks to run (default: every task whose metadata is given)")
    for task in TASKS.values():
        task.add_eval_flags(p)
    r = p.add_argument_group("run")
    r.add_argument("--output-dir", default=None,
                   help="where zeroshot_metrics.json and predictions go (default: work_dirs/zeroshot_<checkpoint "
                        "or model name>)")
    r.add_argument("--batch-size", type=int, default=16, help="clips per batch, per process (default: 16)")
    r.add_argument("--text-batch-size", type=int, default=256, help="class texts per batch (default: 256)")
    r.add_argument("-j", "--workers", type=int, default=0,
                   help="DataLoader worker processes per process (default: 0, decoding in the main process)")
    r.add_argument("--video-chunk-length", type=float, default=15.0,
                   help="seconds per video chunk file (default: 15); 0 for one file per video (<root>/<id>.mp4)")
    r.add_argument("--video-backend", default="auto", choices=["auto", "decord", "pyav"],
                   help="decoder (default: auto)")
    r.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    r.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="autocast on CUDA (default: fp32)")
    r.add_argument("--seed", type=int, default=0, help="initialisation seed of a model built without a checkpoint")
    return p


# ---- model ------------------------------------------------------------------------------------------------------

def build_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model (eval mode) and its data settings: ``num_frames``, ``crop``, ``norm``, ``context_length``."""
    from lavila.models import create_model
    from lavila.models.checkpoint_spec import checkpoint_norm_style
    from lavila.models.released import build_from_released_checkpoint
    from lavila.train.flags import parse_overrides

    overrides = parse_overrides(args.model_overrides)
    ckpt = None
    if args.resume:
        from lavila import zoo
        from lavila.utils.checkpoint import load_checkpoint

        ckpt = load_checkpoint(zoo.resolve(args.resume), trusted=args.trust_checkpoint)
    if args.clip_length is not None:
        overrides["num_frames"] = args.clip_length
    if ckpt is not None:  # this project's checkpoint (stored model_config) or a released one (args)
        model = build_from_released_checkpoint(ckpt, num_frames=overrides.pop("num_frames", None),
                                               model_name=args.model, **overrides)
    else:
        if not args.model:
            raise EvalError("give --resume CHECKPOINT or --model NAME")
        torch.manual_seed(args.seed)  # the same random weights on every rank
        model = create_model(args.model, **overrides)
    if not hasattr(model, "encode_text"):
        raise EvalError("zero-shot evaluation needs a CLIP dual encoder; this checkpoint is a classifier "
                        "(evaluate it with main_finetune_classification.py --evaluate)")
    config = getattr(model, "config", {}) or {}
    info = {
        "model": config.get("name", args.model),
        "num_frames": int(getattr(model, "num_frames", config.get("num_frames", 4))),
        "crop": args.input_size or int(config.get("img_size", 224)),
        "norm": args.norm_style or checkpoint_norm_style(ckpt) or "openai",
        "context_length": args.context_length or int(config.get("context_length", 77)),
    }
    return model.eval(), info


# ---- tasks ------------------------------------------------------------------------------------------------------

def _autocast(args: argparse.Namespace, device: torch.device) -> Any:
    if device.type != "cuda" or args.precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if args.precision == "bf16" else torch.float16)


def task_config(args: argparse.Namespace, task: Task) -> dict[str, Any]:
    """The task's config from its ``--<prefix>-*`` flags (a root may fall back to another task's, CLS -> MIR)."""
    root = getattr(args, task.root_key) or (getattr(args, task.root_fallback) if task.root_fallback else None)
    if not root:
        raise EvalError(f"--{task.flag_prefix}-metadata needs --{task.flag_prefix}-root ({task.root_help})")
    return task.config(args, root, getattr(args, task.metadata_key))


def _flags(task: Task, args: argparse.Namespace) -> dict[str, str]:
    own_root = getattr(args, task.root_key) or not task.root_fallback
    root = f"--{task.flag_prefix}-root" if own_root else "--" + str(task.root_fallback).replace("_", "-")
    return {"root": root, "metadata": f"--{task.flag_prefix}-metadata"}


def run_task(args: argparse.Namespace, task: Task, model: torch.nn.Module, info: dict[str, Any],
             device: torch.device) -> tuple[dict[str, float], int]:
    """One task's metrics and the frames per clip it ran at."""
    from lavila.evaluation import zeroshot

    frames = int(getattr(args, f"{task.flag_prefix}_clip_length", None) or args.clip_length
                 or task.protocol_frames or info["num_frames"])
    if frames != info["num_frames"]:
        du.print_main(f"{task.name}: {frames} frames per clip (model's temporal embedding resized from "
                      f"{info['num_frames']})")
    data = DataSettings(frames, info["crop"], info["norm"], info["context_length"], args.video_chunk_length,
                        args.video_backend)
    prepared = task.build(task_config(args, task), data)
    loader = zeroshot.sharded_loader(prepared.dataset, args.batch_size, args.workers)
    ctx = EvalContext(device, _autocast(args, device), args.output_dir, args.text_batch_size)
    return task.evaluate(with_num_frames(model, frames), prepared, loader, ctx), frames


def default_output_dir(args: argparse.Namespace) -> str:
    """``work_dirs/zeroshot_<checkpoint file stem, zoo name or model name>``."""
    import re

    source = Path(args.resume).stem if args.resume else (args.model or "model")
    return str(Path("work_dirs") / ("zeroshot_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", source)))


def check_data(args: argparse.Namespace, tasks: list[str]) -> None:
    """Start-up checks of the tasks' annotations and videos (:mod:`lavila.data.checks`), before the model is built."""
    for name in tasks:
        task = TASKS[name]
        task.check(task_config(args, task), DataSettings(0, chunk_len=args.video_chunk_length), _flags(task, args))


# ---- main -------------------------------------------------------------------------------------------------------

def _table(results: dict[str, dict[str, float]]) -> str:
    percent = [n for n in results if TASKS[n].unit == "percent"]
    units = f"({', '.join(percent)}: percent; other tasks: fractions)" if percent else "(fractions)"
    lines = [units, f"{'task':<14} {'metric':<20} {'value':>10}", "-" * 46]
    for name, metrics in results.items():
        lines += [f"{name:<14} {key:<20} {shown:>10}" for key, shown in TASKS[name].table(metrics)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Known errors (flags, checkpoints, data) end with one ``error:`` line and status 2 (``--debug``: traceback)."""
    from lavila.train.errors import describe_error, known_errors
    from lavila.utils.cli import run_main

    return run_main(lambda: evaluate(argv), (*known_errors(), EvalError), argv, describe_error)


def evaluate(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    requested = [canonical_name(t) for t in args.tasks or []]
    given = {name: getattr(args, task.metadata_key) for name, task in TASKS.items()}
    tasks = [n for n in TASKS if (n in requested if requested else given[n])]
    missing = [n for n in tasks if not given[n]]
    if missing or not tasks:
        need = missing or list(TASKS)
        raise EvalError("nothing to evaluate: give " + " / ".join(f"--{TASKS[n].flag_prefix}-metadata" for n in need))
    from lavila.models import list_models

    if args.model and args.model not in list_models():
        raise EvalError(f"--model {args.model!r} is not a known model; choose one of {', '.join(list_models())}")
    if not args.output_dir:
        args.output_dir = default_output_dir(args)
    if args.print_config:  # validated; nothing is read or built
        sys.stdout.write(config_yaml(args))
        return 0
    info_dist = du.init_distributed(args.device)
    try:
        device = info_dist.device
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        check_data(args, tasks)
        model, info = build_model(args)
        model.to(device)
        du.print_main(f"model {info['model']}: {info['num_frames']} frames, crop {info['crop']}, norm {info['norm']}, "
                      f"{info_dist.world_size} process(es) on {device}")
        results: dict[str, dict[str, float]] = {}
        frames: dict[str, int] = {}
        for name in tasks:
            tic = time.perf_counter()
            results[name], frames[name] = run_task(args, TASKS[name], model, info, device)
            du.print_main(f"{name}: done in {time.perf_counter() - tic:.1f}s")
        if du.is_main_process():
            du.print_main(_table(results))
            payload = {"checkpoint": args.resume or None, **info, "world_size": info_dist.world_size,
                       "task_frames": frames, **results}
            path = Path(args.output_dir) / "zeroshot_metrics.json"
            path.write_text(json.dumps(payload, indent=1))
            du.print_main(f"metrics: {path}")
    finally:
        du.cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
