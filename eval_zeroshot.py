"""Zero-shot evaluation of a registry model or checkpoint on EK100 MIR, EK100 CLS and EgoSchema.

    python eval_zeroshot.py --resume clip_timesformer_vanilla_base_ego4d4m_bs512_f4.pt \\
        --mir-root videos/epic --mir-metadata EPIC_100_retrieval_test.csv --output-dir out/

The checkpoint may be a local path, a URL or a zoo name (``lavila.zoo``); without one, ``--model`` builds a randomly
initialised registry model (``--model-overrides`` for tiny test sizes). Frame count, crop size, normalisation and the
tokenizer's context length come from the checkpoint's stored config unless given as flags. A task runs when its
metadata flag is given (or pick them with ``--tasks``). Runs the same under ``torchrun`` (each rank encodes a shard;
identical numbers). Prints a table, writes ``<output-dir>/zeroshot_metrics.json``, EgoSchema predictions in the
official submission format, and with ``--save-similarity`` the MIR similarity matrix (``mir_similarity.npy``).
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
from lavila.utils import distributed as du

TASKS = ("mir", "cls", "egoschema")


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
    t = p.add_argument_group("tasks")
    t.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help="default: every task with metadata")
    t.add_argument("--mir-root", default=None, help="EK100 chunked video folder")
    t.add_argument("--mir-metadata", default=None, help="EPIC_100_retrieval_test.csv")
    t.add_argument("--mir-sentences", default=None, help="default: <metadata stem>_sentence.csv beside it")
    t.add_argument("--relevancy-path", default=None,
                   help="relevancy pickle (default: <csv dir>/relevancy/caption_relevancy_<stem>.pkl, else rebuilt)")
    t.add_argument("--cls-root", default=None, help="EK100 chunked video folder (default: --mir-root)")
    t.add_argument("--cls-metadata", default=None, help="EPIC_100_validation.csv")
    t.add_argument("--cls-vocab", default=None, help="action vocabulary JSON (ActionVocabulary.save)")
    t.add_argument("--cls-vocab-csvs", nargs="+", default=None,
                   help="CSVs whose verb:noun pairs form the vocabulary (EPIC_100_train.csv EPIC_100_validation.csv)")
    t.add_argument("--cls-text-csvs", nargs="+", default=None,
                   help="CSVs whose narrations are the class texts (default: --cls-vocab-csvs, else --cls-metadata)")
    t.add_argument("--cls-use-template", action="store_true", help="ensemble the '#C C {}' and '#C {}' templates")
    t.add_argument("--egoschema-root", default=None, help="folder of <q_uid>.mp4")
    t.add_argument("--egoschema-questions", default=None, help="questions JSON")
    t.add_argument("--egoschema-answers", default=None, help="answers JSON {q_uid: index} to score locally")
    r = p.add_argument_group("run")
    r.add_argument("--output-dir", default=None,
                   help="where zeroshot_metrics.json and predictions go (default: work_dirs/zeroshot_<checkpoint "
                        "or model name>)")
    r.add_argument("--save-similarity", action="store_true", help="save the MIR similarity matrix (.npy)")
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


def run_mir(args: argparse.Namespace, model: torch.nn.Module, info: dict[str, Any], device: torch.device
            ) -> dict[str, float]:
    from lavila.data.ek100 import EK100MIRDataset
    from lavila.data.relevancy import resolve_relevancy
    from lavila.evaluation import zeroshot

    if not args.mir_root:
        raise EvalError("--mir-metadata needs --mir-root (the EK100 video folder)")
    dataset = EK100MIRDataset(args.mir_root, args.mir_metadata, is_training=False, sentence_path=args.mir_sentences,
                              num_frames=info["num_frames"], chunk_len=args.video_chunk_length, crop_size=info["crop"],
                              norm=info["norm"], context_length=info["context_length"], backend=args.video_backend)
    relevancy = resolve_relevancy(dataset.clips, dataset.sentences, args.mir_metadata, args.relevancy_path)
    loader = zeroshot.sharded_loader(dataset, args.batch_size, args.workers)
    metrics, similarity = zeroshot.evaluate_mir(model, loader, relevancy, None, device, _autocast(args, device))
    if args.save_similarity and du.is_main_process():
        import numpy as np

        np.save(Path(args.output_dir) / "mir_similarity.npy", similarity)
    return metrics


def run_cls(args: argparse.Namespace, model: torch.nn.Module, info: dict[str, Any], device: torch.device
            ) -> dict[str, float]:
    from lavila.data.ek100 import ActionVocabulary, EK100CLSDataset, read_ek100_csv, zeroshot_class_texts
    from lavila.evaluation import zeroshot

    root = args.cls_root or args.mir_root
    if not root:
        raise EvalError("--cls-metadata needs --cls-root (the EK100 video folder)")
    if args.cls_vocab:
        vocab = ActionVocabulary.load(args.cls_vocab)
    else:
        vocab = ActionVocabulary.from_csvs(args.cls_vocab_csvs or [args.cls_metadata])
    text_csvs = args.cls_text_csvs or args.cls_vocab_csvs or [args.cls_metadata]
    templates = ("#C C {}", "#C {}") if args.cls_use_template else ("{}",)
    texts = zeroshot_class_texts(vocab, [read_ek100_csv(p) for p in text_csvs], templates=templates)
    dataset = EK100CLSDataset(root, args.cls_metadata, vocab, is_training=False, num_frames=info["num_frames"],
                              chunk_len=args.video_chunk_length, crop_size=info["crop"], norm=info["norm"],
                              backend=args.video_backend)
    autocast = _autocast(args, device)
    classes = zeroshot.class_embeddings(model, texts, device, args.text_batch_size, info["context_length"], autocast)
    loader = zeroshot.sharded_loader(dataset, args.batch_size, args.workers)
    metrics, _ = zeroshot.evaluate_zeroshot_cls(model, loader, classes.to(device), vocab.act2verb, vocab.act2noun,
                                                device, autocast)
    return metrics


def run_egoschema(args: argparse.Namespace, model: torch.nn.Module, info: dict[str, Any], device: torch.device
                  ) -> dict[str, float]:
    from lavila.data.egoschema import EgoSchemaDataset
    from lavila.evaluation import egoschema, zeroshot

    if not args.egoschema_root:
        raise EvalError("--egoschema-questions needs --egoschema-root (folder of <q_uid>.mp4)")
    answers = egoschema.load_answers(args.egoschema_answers) if args.egoschema_answers else None
    dataset = EgoSchemaDataset(args.egoschema_root, args.egoschema_questions, num_frames=info["num_frames"],
                               crop_size=info["crop"], norm=info["norm"], context_length=info["context_length"],
                               backend=args.video_backend)
    loader = zeroshot.sharded_loader(dataset, args.batch_size, args.workers)
    return zeroshot.egoschema_task(model, loader, device, args.output_dir, answers,
                                   f"egoschema_predictions_f{info['num_frames']}", _autocast(args, device))


def default_output_dir(args: argparse.Namespace) -> str:
    """``work_dirs/zeroshot_<checkpoint file stem, zoo name or model name>``."""
    import re

    source = Path(args.resume).stem if args.resume else (args.model or "model")
    return str(Path("work_dirs") / ("zeroshot_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", source)))


def check_data(args: argparse.Namespace, tasks: list[str]) -> None:
    """Start-up checks of the EK100 annotations and videos (:mod:`lavila.data.checks`), before the model is built."""
    from lavila.data import checks

    try:
        if "mir" in tasks and args.mir_root:
            checks.check_mir(args.mir_metadata, args.mir_root, args.video_chunk_length, False, "--mir-metadata",
                             "--mir-root", sentences=args.mir_sentences)
        if "cls" in tasks and (args.cls_root or args.mir_root):
            checks.check_cls(args.cls_metadata, args.cls_root or args.mir_root, args.video_chunk_length,
                             "--cls-metadata", "--cls-root" if args.cls_root else "--mir-root")
    except checks.DataCheckError as exc:
        raise EvalError(str(exc)) from None


# ---- main -------------------------------------------------------------------------------------------------------

def _table(results: dict[str, dict[str, float]]) -> str:
    lines = ["(MIR and EgoSchema: fractions; CLS: percent)", f"{'task':<10} {'metric':<14} {'value':>10}", "-" * 36]
    for task, metrics in results.items():
        for key, value in metrics.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"{task:<10} {key:<14} {shown:>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Known errors (flags, checkpoints, data) end with one ``error:`` line and status 2 (``--debug``: traceback)."""
    from lavila.train.errors import describe_error, known_errors
    from lavila.utils.cli import run_main

    return run_main(lambda: evaluate(argv), (*known_errors(), EvalError), argv, describe_error)


def evaluate(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    requested = set(args.tasks or [])
    given = {"mir": args.mir_metadata, "cls": args.cls_metadata, "egoschema": args.egoschema_questions}
    tasks = [t for t in TASKS if (t in requested if requested else given[t])]
    missing = [t for t in tasks if not given[t]]
    if missing or not tasks:
        flags = {"mir": "--mir-metadata", "cls": "--cls-metadata", "egoschema": "--egoschema-questions"}
        need = missing or list(TASKS)
        raise EvalError("nothing to evaluate: give " + " / ".join(flags[t] for t in need))
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
        runners = {"mir": run_mir, "cls": run_cls, "egoschema": run_egoschema}
        results: dict[str, dict[str, float]] = {}
        for task in tasks:
            tic = time.perf_counter()
            results[task] = runners[task](args, model, info, device)
            du.print_main(f"{task}: done in {time.perf_counter() - tic:.1f}s")
        if du.is_main_process():
            du.print_main(_table(results))
            payload = {"checkpoint": args.resume or None, **info, "world_size": info_dist.world_size, **results}
            path = Path(args.output_dir) / "zeroshot_metrics.json"
            path.write_text(json.dumps(payload, indent=1))
            du.print_main(f"metrics: {path}")
    finally:
        du.cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
