"""The one training core behind ``main_pretrain.py``, ``main_finetune_retrieval.py`` and
``main_finetune_classification.py``.

``run(engine, argv)`` parses flags (``--config`` YAML + CLI), initialises torchrun / Slurm / single-process
execution, builds data before the model (so a bad data path fails before any model is built), then trains:
per-iteration warmup + cosine LR, AMP on CUDA (bf16, or fp16 with GradScaler; fp32 on CPU), gradient accumulation
(``--update-freq``, with DDP ``no_sync`` on the inner micro-batches), gradient clipping, logit-scale clamp to
[0, ln 100] when the temperature is trainable, evaluation every ``--eval-freq`` epochs, and checkpoints.

Checkpoints (``<output-dir>/checkpoint.pt`` every ``--save-freq`` epochs, ``checkpoint_best.pt`` on a better metric)
are written atomically and hold ``state_dict`` (no ``module.`` prefix), ``optimizer``, ``scaler``, ``epoch`` (next
epoch to run), ``step_in_epoch`` (micro-batches already done in that epoch, non-zero only after a preemption save),
``global_step``, ``best_acc1`` (best tracked metric), ``args`` (plain dict), ``model_name``, ``model_config`` and
the RNG states of every rank, so they load with ``torch.load(weights_only=True)``.

Resuming: when ``<output-dir>/checkpoint.pt`` exists the run continues from it (auto-resume; it wins over
``--resume``), unless the folder's ``config.yaml`` differs in a training flag (``run_dir.check_resumable``; a new
``--output-dir`` or ``--resume-anyway``). Records the interrupted run logged past the checkpoint are dropped from
``metrics.jsonl`` and hidden in TensorBoard; a finished run relaunched logs so and returns. With the same flags and
seed the final weights are bit-identical to an uninterrupted run on CPU (tested with ``--workers 0``): the sampler
restarts at the saved position, each training sample's augmentation is seeded by (seed, epoch, index)
(``PerSampleSeededDataset``, which also makes it independent of the number of processes), and the global RNG states
of every rank are restored. This holds with and without ``--fused-decode-crop`` (the fused path reads each video's
frame size from its header, so every read of a clip is decoded the same way), but do not switch that flag between
the interrupted and the resumed run.

Preemption: SIGTERM, SIGUSR1 and Ctrl-C (SIGINT; a second one aborts at once) (what Slurm sends before it preempts
or times out a job, e.g. with ``#SBATCH --signal=USR1@120``; torchrun forwards SIGTERM to its workers) set a flag;
at the next optimiser-step boundary every rank agrees to stop, rank 0 writes ``checkpoint.pt`` with the position
inside the epoch, and ``run`` returns ``{"status": "preempted", ...}`` (the entry scripts then exit with status 0).
Re-running the same command resumes from that step. Requeue the job with ``scontrol requeue $SLURM_JOB_ID`` or
``#SBATCH --requeue``.

A non-finite loss raises ``NonFiniteLossError`` naming the epoch and step; the last good checkpoint stays in place.

What a checkpoint holds and how it is written / restored: ``checkpointing.py``; the signal flag: ``preemption.py``;
the steps of one epoch: ``train_epoch.py``; autocast and the GradScaler: ``amp.py``.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lavila.config import ArgumentParser, config_yaml, parse_args, resolved_config, save_resolved_config
from lavila.train.amp import autocast, grad_scaler
from lavila.train.checkpointing import (
    CHECKPOINT,
    TrainState,
    load_model_weights,
    restore_training_state,
    save_training_checkpoint,
    unwrap_model,
)
from lavila.train.errors import (  # NonFiniteLossError: re-exported, callers import it from here
    NonFiniteLossError,  # noqa: F401
    TrainingError,
    describe_error,
    known_errors,
    last_line,
)
from lavila.train.flags import REFERENCE_DATA_PATHS, REFERENCE_DEFAULTS, no_effect_notes, parse_overrides
from lavila.train.optim import build_optimizer
from lavila.train.preemption import PreemptionFlag, ignore_sigint
from lavila.train.run_dir import add_log_file, check_resumable, default_output_dir, remove_log_file
from lavila.train.run_spec import (
    adopt_checkpoint_spec,
    describing_source,
    explicit_flags,
    get_checkpoint,
    model_summary,
)
from lavila.train.sampler import PerSampleSeededDataset, ResumableDistributedSampler
from lavila.train.schedule import cosine_scheduler, set_lr
from lavila.train.startup import check_reference_paths, flag_problems, model_tower
from lavila.train.train_epoch import train_epoch
from lavila.utils import distributed as du
from lavila.utils.checkpoint import load_checkpoint
from lavila.utils.logging import MetricLogger, get_logger


class Engine:
    """What differs between the three engines. Subclasses override the hooks below."""

    name = "engine"
    description = ""
    metric = "avg_map"  # key of ``evaluate``'s result tracked for checkpoint_best.pt (higher is better)
    metric_unit = "fraction"  # of ``evaluate``'s values, shown with them in the log ("fraction" or "percent")
    defaults: dict[str, Any] = {}  # engine defaults for the common flags (see flags.add_common_args)

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        """Engine-specific flags."""

    def prepare_args(self, args: argparse.Namespace, info: du.DistInfo) -> None:
        """Validate / derive flags after parsing (e.g. LR scaling)."""

    def build_datasets(self, args: argparse.Namespace) -> tuple[Dataset | None, Dataset | None]:
        """(train, val); train is not built for ``--evaluate``; val may be None (no evaluation)."""
        raise NotImplementedError

    def build_model(self, args: argparse.Namespace) -> nn.Module:
        raise NotImplementedError

    def build_criterion(self, args: argparse.Namespace) -> nn.Module:
        raise NotImplementedError

    def train_step(self, model: nn.Module, batch: Any, criterion: nn.Module, args: argparse.Namespace,
                   device: torch.device) -> dict[str, torch.Tensor]:
        """Forward + loss of one micro-batch; returns a dict with ``loss`` and other scalars to log."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: Iterable[Any], args: argparse.Namespace,
                 device: torch.device) -> dict[str, float]:
        raise NotImplementedError

    def lr_values(self, args: argparse.Namespace, world_size: int) -> tuple[float, float, float]:
        """(lr, lr_start, lr_end) actually used (the CLS engine scales them by the global batch)."""
        return args.lr, args.lr_start, args.lr_end

    def checkpoint_extra(self, args: argparse.Namespace) -> dict[str, Any]:
        """Extra plain-data entries to store in checkpoints."""
        return {}

    def flags_in_use(self, args: argparse.Namespace) -> set[str]:
        """Flags of ``flags.NO_EFFECT`` that this run does use (e.g. EGTEA's --num-clips)."""
        return set()


# ------------------------------------------------------------------------------------------------ helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Named-config overrides from the flags: frame count, projection size, drop path, text sizes, --model-overrides."""
    out: dict[str, Any] = {"num_frames": args.clip_length, "drop_path_rate": args.drop_path_rate,
                           "img_size": args.input_size, "patch_dropout": getattr(args, "patch_dropout", 0.0)}
    for key in ("project_embed_dim", "context_length", "vocab_size"):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    out.update(parse_overrides(args.model_overrides))
    return out


# ------------------------------------------------------------------------------------------------ the parser


def build_parser(engine: Engine) -> argparse.ArgumentParser:
    from lavila.train.flags import HelpFormatter, add_common_args

    parser = ArgumentParser(description=engine.description, formatter_class=HelpFormatter)
    add_common_args(parser, **engine.defaults)
    engine.add_args(parser)
    parser.set_defaults(**REFERENCE_DATA_PATHS.get(engine.name, {}))  # the reference's datasets/... layout
    parser.set_defaults(**REFERENCE_DEFAULTS.get(engine.name, {}))
    return parser


def parse_engine_args(engine: Engine, argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_args(build_parser(engine), list(argv) if argv is not None else None)


# ------------------------------------------------------------------------------------------------ the run


def build_loader(dataset: Dataset, args: argparse.Namespace, info: du.DistInfo, training: bool) -> DataLoader:
    """Training: resumable sharded shuffle, ``drop_last``, skip-and-count collate (``--skip-policy``).
    Evaluation: :func:`lavila.evaluation.zeroshot.sharded_loader` (rank r takes whole batches r, r + world, ..., so
    N processes give the numbers of one); unreadable samples raise."""
    from lavila.data.loader import SkipCollate, SkipTracker, attach_skip_tracker

    tracker = SkipTracker()
    attach_skip_tracker(dataset, tracker)
    if hasattr(dataset, "decode_threads"):  # ClipDataset: --decode-threads reaches decord / PyAV (read per sample)
        dataset.decode_threads = args.decode_threads
    pin_memory = info.device.type == "cuda"
    if training:
        dataset = PerSampleSeededDataset(dataset, seed=args.seed)
        sampler = ResumableDistributedSampler(len(dataset), info.rank, info.world_size, shuffle=True, seed=args.seed,
                                              reshuffle=getattr(args, "epoch_shuffle", "each-epoch") != "reference")
        generator = torch.Generator().manual_seed(args.seed + info.rank)  # worker seeds; leaves the global RNG alone
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                            collate_fn=SkipCollate(tracker, args.skip_policy), drop_last=True, pin_memory=pin_memory,
                            generator=generator, worker_init_fn=ignore_sigint if args.workers > 0 else None)
    else:
        from lavila.evaluation.zeroshot import sharded_loader

        loader = sharded_loader(dataset, args.batch_size, args.workers, SkipCollate(tracker, "raise"),
                                pin_memory=pin_memory)
    loader.skip_tracker = tracker  # type: ignore[attr-defined]
    return loader


def run_evaluation(engine: Engine, model: nn.Module, val_loader: DataLoader, args: argparse.Namespace,
                   device: torch.device) -> dict[str, float]:
    from lavila.data.loader import SampleSkippedError
    from lavila.data.video import VideoDecodeError

    model.eval()
    try:
        with torch.no_grad(), autocast(args, device):
            metrics = engine.evaluate(unwrap_model(model), val_loader, args, device)
    except (SampleSkippedError, VideoDecodeError) as exc:  # evaluation reads every sample, whatever --skip-policy
        raise TrainingError(f"evaluation: {last_line(exc)} (every evaluation sample must be readable: fix the "
                            "file or remove its row from --val-metadata)") from exc
    model.train()
    return {k: float(v) for k, v in metrics.items()}


def build_training_optimizer(model: nn.Module, args: argparse.Namespace, info: du.DistInfo,
                             log: Any) -> torch.optim.Optimizer:
    """:func:`build_optimizer`; with ``--use-zero`` on several processes the same parameter groups and
    hyper-parameters in a ``ZeroRedundancyOptimizer`` (each rank keeps the state of its shard)."""
    optimizer = build_optimizer(model, args)
    if not args.use_zero:
        return optimizer
    if not info.distributed:
        log.info("note: --use-zero with one process: nothing to shard, the plain optimizer is used")
        return optimizer
    import inspect

    from torch.distributed.optim import ZeroRedundancyOptimizer

    accepted = inspect.signature(type(optimizer)).parameters  # defaults also hold internal keys
    kwargs = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    groups = [dict(group) for group in optimizer.param_groups]
    return ZeroRedundancyOptimizer(groups, optimizer_class=type(optimizer), **kwargs)


def run(engine: Engine, argv: Sequence[str] | None = None, *, args: argparse.Namespace | None = None,
        preemption: PreemptionFlag | None = None, stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Parse flags and run training or ``--evaluate``. Returns a summary dict (``status``, metrics, paths).

    ``stop_after_epochs`` (API only, for tests and scripts) stops like a preemption after that many epochs of this
    invocation; ``preemption`` lets a caller request a stop without a signal.
    """
    given = list(argv) if argv is not None else (sys.argv[1:] if args is None else None)
    args = args if args is not None else parse_engine_args(engine, argv)
    explicit = explicit_flags(build_parser(engine), given, args)
    problems = flag_problems(args)
    if problems:
        raise TrainingError("; ".join(problems))
    if getattr(args, "print_config", False):  # validated; nothing is read, built or joined
        args.output_dir = args.output_dir or default_output_dir(engine.name, args)
        sys.stdout.write(config_yaml(args))
        sys.stdout.flush()
        return {"status": "printed", "config": resolved_config(args)}
    info = du.init_distributed(args.device, rendezvous_timeout_s=getattr(args, "dist_timeout", None))
    log = get_logger("lavila")
    flag = preemption or PreemptionFlag()
    flag.install()
    try:
        return _run(engine, args, info, log, flag, stop_after_epochs, explicit=explicit)
    finally:
        flag.uninstall()
        remove_log_file(log)


def _describe_run(engine: Engine, args: argparse.Namespace, explicit: set[str], log: Any) -> Path:
    """Model settings from the checkpoint that describes the run (run_spec), the output folder (default
    ``work_dirs/<engine>_<model>``), and the guard against auto-resuming a different run (run_dir)."""
    source = describing_source(args)
    if source is not None:
        adopt_checkpoint_spec(args, get_checkpoint(source[0], args.trust_checkpoint), source[0], source[1],
                              explicit, log)
    if not args.output_dir:
        args.output_dir = default_output_dir(engine.name, args)
    out_dir = Path(args.output_dir)
    if not args.evaluate and (out_dir / CHECKPOINT).is_file():
        check_resumable(out_dir, args, log)
    return out_dir


def _run(engine: Engine, args: argparse.Namespace, info: du.DistInfo, log: Any, flag: PreemptionFlag,
         stop_after_epochs: int | None, explicit: set[str] | None = None) -> dict[str, Any]:
    errors, notes = check_reference_paths(args, engine.name)
    if errors:
        raise TrainingError("; ".join(errors))
    defaults = vars(build_parser(engine).parse_args([]))
    notes += no_effect_notes(args, {**defaults, **{k: getattr(args, k) for k in engine.flags_in_use(args)}})
    out_dir = _describe_run(engine, args, explicit or set(), log)
    if info.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        add_log_file(out_dir, log)
    engine.prepare_args(args, info)
    save_resolved_config(args, out_dir)
    metrics_log = MetricLogger(out_dir)
    device = info.device
    seed_everything(args.seed)  # same model initialisation on every rank
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    train_set, val_set = engine.build_datasets(args)
    model = engine.build_model(args)
    log.info(model_summary(model, args))
    for note in notes + no_effect_notes(argparse.Namespace(patch_dropout=args.patch_dropout), {}, model_tower(model)):
        log.info(f"note: {note}")
    if args.grad_checkpointing and hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    model.to(device)
    seed_everything(args.seed + info.rank)  # per-rank augmentation / dropout streams
    val_loader = build_loader(val_set, args, info, training=False) if val_set is not None else None

    if args.evaluate:
        return _evaluate_only(engine, args, model, val_loader, device, metrics_log, log)

    if train_set is None:
        raise TrainingError("no training data: pass --train-metadata and --root")
    train_loader = build_loader(train_set, args, info, training=True)
    ipe = len(train_loader) // args.update_freq  # optimiser steps per epoch
    if ipe == 0:
        raise TrainingError(f"the training set ({len(train_set)} samples) gives no full optimiser step with "
                            f"--batch-size {args.batch_size} x {info.world_size} processes x --update-freq "
                            f"{args.update_freq}; lower them or add data")
    criterion = engine.build_criterion(args).to(device)
    optimizer = build_training_optimizer(model, args, info, log)
    lr, lr_start, lr_end = engine.lr_values(args, info.world_size)
    set_lr(optimizer, lr)
    scaler = grad_scaler(args, device)
    schedule = None if args.fix_lr else cosine_scheduler(lr, lr_end, args.epochs, ipe, args.warmup_epochs, lr_start)
    state = TrainState()
    state.epoch = args.start_epoch
    auto = out_dir / CHECKPOINT
    resumed_from = auto if auto.is_file() else (args.resume or None)
    if resumed_from is not None:
        ckpt = load_checkpoint(auto, trusted=args.trust_checkpoint) if resumed_from == auto else \
            get_checkpoint(args.resume, args.trust_checkpoint)
        restore_training_state(ckpt, model, optimizer, scaler, state, full=True, log=log)
    # records past the starting point come from an attempt that was not saved: drop them (and hide them in TB)
    dropped = metrics_log.resume_at(state.global_step, state.epoch)
    if resumed_from is not None:
        log.info(f"{'auto-' if resumed_from == auto else ''}resuming from {resumed_from}: epoch {state.epoch}, step "
                 f"{state.step_in_epoch}/{ipe * args.update_freq} of the epoch, optimiser step {state.global_step}"
                 + (f" ({dropped} metrics records past it dropped)" if dropped else ""))
    if state.epoch >= args.epochs:
        log.info(f"the run in {out_dir} is finished ({state.epoch}/{args.epochs} epochs): nothing to do; a new "
                 "--output-dir starts another run, --epochs N --resume-anyway trains this one longer")
        metrics_log.close()
        return {"status": "finished", "already_finished": True, "output_dir": str(out_dir), "metrics": {},
                "best": state.best if math.isfinite(state.best) else None, "global_step": state.global_step,
                "skipped_samples": state.skipped}
    ddp = model
    if info.distributed:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    log.info(f"{engine.name}: {len(train_set)} training samples, {ipe} optimiser steps/epoch, "
             f"{info.world_size} process(es) on {device}; output in {out_dir}")

    summary: dict[str, Any] = {"status": "finished", "output_dir": str(out_dir)}
    epochs_run = 0
    last_eval: dict[str, float] = {}
    while state.epoch < args.epochs:
        epoch = state.epoch
        sampler = train_loader.sampler
        sampler.set_epoch(epoch)
        train_loader.dataset.set_epoch(epoch)
        start_micro = state.step_in_epoch
        sampler.set_start(start_micro * args.batch_size)
        train_loader.generator.manual_seed(args.seed * 1000 + epoch * 10 + info.rank)
        stopped = train_epoch(engine.train_step, args, ddp, train_loader, criterion, optimizer, scaler, schedule,
                              state, ipe, start_micro, device, metrics_log, log, flag, info)
        if stopped:
            save_training_checkpoint(engine, args, ddp, optimizer, scaler, state)
            log.info(f"stopped by signal {stopped}: checkpoint saved at epoch {epoch} step {state.step_in_epoch}; "
                     "re-run the same command to resume")
            summary.update(status="preempted", epoch=epoch, step_in_epoch=state.step_in_epoch)
            break
        state.epoch, state.step_in_epoch = epoch + 1, 0
        epochs_run += 1
        record: dict[str, Any] = {}
        is_best = False
        if val_loader is not None and (epoch + 1) % args.eval_freq == 0:
            last_eval = run_evaluation(engine, ddp, val_loader, args, device)
            record.update({f"test_{k}": v for k, v in last_eval.items()})
            value = last_eval.get(engine.metric)
            if value is not None and value > state.best:
                state.best, is_best = value, True
        if (epoch + 1) % args.save_freq == 0 or is_best or state.epoch == args.epochs:
            save_training_checkpoint(engine, args, ddp, optimizer, scaler, state, best=is_best)
        record["skipped_samples"] = state.skipped
        metrics_log.log_epoch(epoch, record, step=state.global_step)
        if record:
            tested = any(k.startswith("test_") for k in record)
            unit = f" (test_ metrics: {engine.metric_unit})" if tested else ""
            log.info(f"epoch {epoch}{unit}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in record.items()))
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs and state.epoch < args.epochs:
            summary.update(status="stopped", epoch=state.epoch)
            break
    summary.update(metrics=last_eval, best=state.best if math.isfinite(state.best) else None,
                   global_step=state.global_step, skipped_samples=state.skipped)
    metrics_log.close()
    return summary


def _evaluate_only(engine: Engine, args: argparse.Namespace, model: nn.Module, val_loader: DataLoader | None,
                   device: torch.device, metrics_log: MetricLogger, log: Any) -> dict[str, Any]:
    if val_loader is None:
        raise TrainingError("--evaluate needs evaluation data: pass --val-metadata (and its video root)")
    if args.resume:
        log.info(f"evaluating weights from {args.resume}")
        load_model_weights(model, get_checkpoint(args.resume, args.trust_checkpoint))
    elif not getattr(args, "pretrain_model", ""):
        log.warning("--evaluate without --resume or --pretrain-model evaluates a randomly initialised model")
    metrics = run_evaluation(engine, model, val_loader, args, device)
    metrics_log.log_epoch(-1, metrics, kind="eval")
    metrics_log.close()
    log.info(f"evaluation ({engine.metric_unit}): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return {"status": "evaluated", "metrics": metrics, "output_dir": str(args.output_dir)}


def main(engine: Engine, argv: Sequence[str] | None = None) -> int:
    """Entry-script wrapper: a known failure ends with one line ``error: ...`` and status 2 (``--debug`` or
    ``LAVILA_DEBUG=1``: the traceback); ``--print-config``, finished, evaluated, preempted and stopped runs give 0."""
    from lavila.utils.cli import run_main

    def body() -> int:
        try:
            summary = run(engine, argv)
        finally:
            du.cleanup_distributed()
        return 0 if summary.get("status") in ("finished", "evaluated", "preempted", "stopped", "printed") else 1

    return run_main(body, known_errors(), argv, describe_error)
