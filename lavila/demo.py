"""``make demo``: the whole system on a generated dataset, in one command, on a CPU.

1. generates the demo dataset (Ego4D-style pretraining clips, EK100-style MIR / CLS sets, EgoSchema-style questions)
   with ``python -m lavila.data.synthetic`` into ``--data-dir`` (reused when its manifest matches);
2. saves the model at initialisation and evaluates it zero-shot with ``eval_zeroshot.py`` (MIR, CLS, EgoSchema);
3. pretrains it with ``main_pretrain.py --config configs/demo/pretrain_timemamba.yaml`` (progress bar, MIR mAP
   after every epoch); ``--compare-timesformer`` also trains a TimeSformer with the same recipe;
4. evaluates the pretrained checkpoint with ``eval_zeroshot.py`` and prints the metrics next to chance level;
5. writes the report folder: ``metrics.json``, ``summary.json``, ``loss.png``, ``lr.png``, ``retrieval_map.png``,
   ``retrieval_example.png``;
6. extracts window features of the EK100-style test videos with the pretrained model (``extract_features.py``, 3-s
   windows at stride 1.5 s) and searches one of their narrations (``python -m lavila.search``): ``search.html`` shows
   the top hits, marked relevant when they cover a clip of the same action (relevancy 1); the query's own clip
   should be among them.

Every stage runs the real entry script as a subprocess, exactly as a user runs it on real data.

    python -m lavila.demo                       # defaults: ./demo_data, ./demo_output
    python -m lavila.demo --compare-timesformer
    python -m lavila.demo --epochs 1 --ego4d-videos 2 --data-dir /tmp/d --output-dir /tmp/o   # smoke size
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"timemamba": "configs/demo/pretrain_timemamba.yaml", "timesformer": "configs/demo/pretrain_timesformer.yaml"}
LABELS = {"timemamba": "TimeMamba", "timesformer": "TimeSformer"}
# Generated-data settings (flags of lavila.data.synthetic); the manifest check reuses data only when they match.
DATA_DEFAULTS = {"seed": 0, "ego4d_videos": 24, "ek100_train_videos": 2, "ek100_test_videos": 3,
                 "egoschema_questions": 25, "video_sec": 30.0, "height": 64, "width": 64, "num_verbs": 4,
                 "num_nouns": 5}
DATA_STAMP = "demo_params.json"
DATA_MARKER = ".lavila-demo-data"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="End-to-end demo: generate data, pretrain, evaluate zero-shot, report.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default="demo_data", help="generated dataset (reused when present and matching)")
    p.add_argument("--output-dir", default="demo_output", help="training runs, evaluations and report/")
    p.add_argument("--report-dir", default=None, help="report folder (default: <output-dir>/report)")
    p.add_argument("--compare-timesformer", action="store_true", help="also pretrain a TimeSformer CLIP")
    p.add_argument("--regenerate", action="store_true", help="regenerate the dataset even if it is present")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None, help="pretraining batch size (default: the config's)")
    p.add_argument("--workers", type=int, default=None, help="decoding worker processes (default: the config's)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of each stage (default: torch's choice, the number of cores)")
    for key, value in DATA_DEFAULTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value,
                       help="generated data: see python -m lavila.data.synthetic --help")
    return p


# ---- stages -----------------------------------------------------------------------------------------------------

def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run_stage(cmd: list[str], log_path: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run an entry script; its output goes to the terminal (progress bars included). Raises naming the command."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    result = subprocess.run(cmd, cwd=REPO, env=env)
    if result.returncode != 0:
        hint = f" (log: {log_path})" if log_path else ""
        raise RuntimeError(f"stage failed with exit status {result.returncode}{hint}: {' '.join(cmd)}")


def ensure_data(data_dir: Path, params: dict[str, Any], regenerate: bool) -> dict[str, Any]:
    """Generate the dataset unless ``data_dir`` already holds one made with the same parameters."""
    manifest, stamp = data_dir / "manifest.json", data_dir / DATA_STAMP
    if not regenerate and manifest.is_file() and stamp.is_file():
        if json.loads(stamp.read_text()) == params:
            print(f"reusing the generated dataset in {data_dir} (delete it or pass --regenerate to rebuild)")
            return json.loads(manifest.read_text())
        print(f"{data_dir} was generated with other settings: regenerating it")
    # The generator writes manifest.json last and the stamp follows it, so a folder without both is incomplete.
    # Only a folder this demo made (marker file) or an empty one is ever deleted.
    if data_dir.is_dir() and any(data_dir.iterdir()) and not (data_dir / DATA_MARKER).is_file():
        raise RuntimeError(f"{data_dir} exists and was not made by the demo; pass another --data-dir "
                           "(the demo only deletes folders it generated)")
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    (data_dir / DATA_MARKER).write_text("generated by python -m lavila.demo; safe to delete\n")
    cmd = [sys.executable, "-m", "lavila.data.synthetic", "--out", str(data_dir)]
    for key, value in params.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    run_stage(cmd)
    (data_dir / DATA_STAMP).write_text(json.dumps(params, indent=1))
    return json.loads((data_dir / "manifest.json").read_text())


def pretrain_argv(config: str, data_dir: Path, run_dir: Path, args: argparse.Namespace) -> list[str]:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    argv = ["--config", str(REPO / config),
            "--root", str(data_dir / manifest["ego4d"]["root"]),
            "--train-metadata", str(data_dir / manifest["ego4d"]["metadata"]),
            "--root-val", str(data_dir / manifest["ek100"]["root"]),
            "--val-metadata", str(data_dir / manifest["ek100"]["mir_test"]),
            "--video-chunk-length", str(manifest["chunk_len"]),
            "--output-dir", str(run_dir)]
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--workers", args.workers)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def save_init_checkpoint(argv: list[str], path: Path) -> None:
    """The model exactly as ``main_pretrain.py`` builds it before its first step (same flags, same seed), saved in
    the training checkpoint format so ``eval_zeroshot.py`` evaluates the initialisation like any checkpoint."""
    from lavila.config import resolved_config
    from lavila.train.loop import parse_engine_args, seed_everything
    from lavila.train.pretrain import PretrainEngine
    from lavila.utils.checkpoint import save_checkpoint

    engine = PretrainEngine()
    args = parse_engine_args(engine, argv)
    seed_everything(args.seed)  # as lavila.train.loop before build_model
    model = engine.build_model(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"state_dict": model.state_dict(), "model_name": model.config.get("name", args.model),
                     "model_config": dict(model.config), "args": resolved_config(args), "epoch": 0}, path)


def eval_argv(checkpoint: Path, data_dir: Path, out_dir: Path) -> list[str]:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    ek = manifest["ek100"]
    ann = data_dir / ek["annotations"]
    return ["--resume", str(checkpoint), "--output-dir", str(out_dir), "--save-similarity",
            "--mir-root", str(data_dir / ek["root"]), "--mir-metadata", str(data_dir / ek["mir_test"]),
            "--cls-metadata", str(data_dir / ek["cls_val"]),
            "--cls-vocab-csvs", str(ann / "EPIC_100_train.csv"), str(ann / "EPIC_100_validation.csv"),
            "--egoschema-root", str(data_dir / manifest["egoschema"]["root"]),
            "--egoschema-questions", str(data_dir / manifest["egoschema"]["questions"]),
            "--egoschema-answers", str(data_dir / manifest["egoschema"]["answers"]),
            "--video-chunk-length", str(manifest["chunk_len"]), "--batch-size", "32", "--device", "cpu"]


def evaluate(checkpoint: Path, data_dir: Path, out_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    run_stage([sys.executable, str(REPO / "eval_zeroshot.py"), *eval_argv(checkpoint, data_dir, out_dir)], env=env)
    return json.loads((out_dir / "zeroshot_metrics.json").read_text())


# ---- features + search -----------------------------------------------------------------------------------------

# frames at 30 fps: 3-s windows (the clips' length), half overlapping
SEARCH_WINDOW, SEARCH_STRIDE, SEARCH_TOP_K = 90, 45, 8


def search_stage(checkpoint: Path, data_dir: Path, out_root: Path, report: Path, env: dict[str, str],
                 clips: Any, sentences: Any, relevancy: Any, similarity: Any) -> dict[str, Any]:
    """Extract features of the MIR test videos and search a narration (``demo_report.pick_search_query`` on the
    evaluation's clip x sentence ``similarity``); returns the query, its own clip and the ranked hits (with
    ``relevant`` and ``own_clip`` marks)."""
    import numpy as np

    from lavila import demo_report as dr
    from lavila.data.ek100 import timestamp_to_seconds
    from lavila.data.relevancy import sentence_columns
    from lavila.search import overlaps

    manifest = json.loads((data_dir / "manifest.json").read_text())
    feats = out_root / "features"
    shutil.rmtree(feats, ignore_errors=True)
    feats.mkdir(parents=True)
    video_root = data_dir / manifest["ek100"]["root"]
    listing = feats.parent / "search_videos.txt"
    listing.write_text("".join(f"{video_root / v}\n" for v in sorted(set(clips["video_id"]))))
    run_stage([sys.executable, str(REPO / "extract_features.py"), "--model", str(checkpoint), "--input", str(listing),
               "--chunk-len", str(manifest["chunk_len"]), "--window", str(SEARCH_WINDOW), "--stride",
               str(SEARCH_STRIDE), "--output-dir", str(feats), "--device", "cpu", "--batch-size", "32"], env=env)
    own_rows = sentence_columns(clips["narration_id"], sentences["narration_id"])
    query = dr.pick_search_query(similarity, relevancy, own_rows)
    text = str(sentences["narration"].iloc[query])
    spans = [(str(v), timestamp_to_seconds(a), timestamp_to_seconds(b))
             for v, a, b in zip(clips["video_id"], clips["start_timestamp"], clips["stop_timestamp"])]
    own = spans[int(own_rows[query])]
    relevant = [spans[row] for row in np.flatnonzero(np.asarray(relevancy)[:, query] >= 1.0)]
    segments = out_root / "search_relevant.csv"
    segments.write_text("video,start_s,end_s\n" + "".join(f"{v},{a},{b}\n" for v, a, b in relevant))
    hits_json = out_root / "search_hits.json"
    run_stage([sys.executable, "-m", "lavila.search", text, "--features-dir", str(feats), "--top-k",
               str(SEARCH_TOP_K), "--relevant", str(segments), "--html", str(report / "search.html"), "--json",
               str(hits_json)], env=env)
    hits = json.loads(hits_json.read_text())[0]["hits"]
    for hit in hits:
        hit["own_clip"] = hit["video"] == own[0] and overlaps(hit["start_s"], hit["end_s"], own[1], own[2])
    return {"query": text, "own_clip": {"video": own[0], "start_s": own[1], "end_s": own[2]}, "hits": hits,
            "relevant_hits": sum(bool(h["relevant"]) for h in hits),
            "own_clip_rank": next((h["rank"] for h in hits if h["own_clip"]), None)}


# ---- report -----------------------------------------------------------------------------------------------------

def mir_tables(data_dir: Path) -> tuple[Any, Any, Any]:
    """(clips, sentences, relevancy) of the demo MIR test set, in the row / column order of the similarity."""
    import pandas as pd

    from lavila.data.relevancy import default_relevancy_path, default_sentence_path, load_relevancy

    manifest = json.loads((data_dir / "manifest.json").read_text())
    csv = data_dir / manifest["ek100"]["mir_test"]
    clips, sentences = pd.read_csv(csv), pd.read_csv(default_sentence_path(csv))
    relevancy = load_relevancy(default_relevancy_path(csv), expected_shape=(len(clips), len(sentences)))
    return clips, sentences, relevancy


def clip_frame_loader(data_dir: Path, num_frames: int, size: int):
    """``load(row) -> uint8 (T, H, W, 3)``: the frames the evaluation decodes for MIR test clip ``row``."""
    from lavila.data.ek100 import EK100MIRDataset

    manifest = json.loads((data_dir / "manifest.json").read_text())
    dataset = EK100MIRDataset(data_dir / manifest["ek100"]["root"], data_dir / manifest["ek100"]["mir_test"],
                              is_training=False, num_frames=num_frames, chunk_len=manifest["chunk_len"],
                              crop_size=size, output="uint8")
    return lambda row: dataset[row][0].permute(1, 2, 3, 0).numpy()


def _fmt(value: float) -> str:
    return f"{value:.3f}" if value == value else "  n/a"


def print_results(summary: dict[str, Any], compare: dict[str, dict[str, Any]]) -> None:
    rows = [("EK100-style MIR avg mAP", "mir_avg_map_init", "mir_avg_map_final", "mir_avg_map_chance"),
            ("EK100-style MIR avg nDCG", "mir_avg_ndcg_init", "mir_avg_ndcg_final", "mir_avg_ndcg_chance"),
            ("EK100-style CLS action top-1", "cls_action_top1_init", "cls_action_top1", "cls_action_top1_chance"),
            ("EgoSchema-style accuracy", "egoschema_acc_init", "egoschema_acc", "egoschema_acc_chance")]
    print(f"\n{'zero-shot metric (' + summary['model_label'] + '), fraction':<40} {'init':>7} {'pretrained':>11} "
          f"{'chance':>7}")
    print("-" * 68)
    for name, init, final, chance in rows:
        print(f"{name:<40} {_fmt(summary[init]):>7} {_fmt(summary[final]):>11} {_fmt(summary[chance]):>7}")
    for label, other in compare.items():
        print(f"{label + ' MIR avg mAP':<40} {_fmt(other['mir_avg_map_init']):>7} "
              f"{_fmt(other['mir_avg_map_final']):>11}")
    verdict = "met" if summary["mir_target_met"] else "NOT met"
    print(f"\nMIR target (>= 0.5 and >= min(3 x init, halfway from init to 1) = {summary['mir_avg_map_target']:.3f}): "
          f"{verdict}; EgoSchema above chance (0.2): {'yes' if summary['egoschema_above_chance'] else 'NO'}")


def train_and_evaluate(key: str, args: argparse.Namespace, data_dir: Path, out_root: Path,
                       env: dict[str, str]) -> dict[str, Any]:
    """Init checkpoint -> zero-shot eval -> pretraining -> zero-shot eval of the final checkpoint, for one model."""
    run_dir = out_root / f"pretrain_{key}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (the data and the venv are what is reused)
    argv = pretrain_argv(CONFIGS[key], data_dir, run_dir, args)
    timings: dict[str, float] = {}

    _say(f"{LABELS[key]}: zero-shot evaluation at initialisation")
    tic = time.perf_counter()
    init_ckpt = out_root / f"init_{key}.pt"
    save_init_checkpoint(argv, init_ckpt)
    init = evaluate(init_ckpt, data_dir, out_root / f"eval_init_{key}", env)
    timings["eval_init_seconds"] = time.perf_counter() - tic

    _say(f"{LABELS[key]}: pretraining ({CONFIGS[key]})")
    tic = time.perf_counter()
    run_stage([sys.executable, str(REPO / "main_pretrain.py"), *argv], env=env)
    timings["pretrain_seconds"] = time.perf_counter() - tic

    _say(f"{LABELS[key]}: zero-shot evaluation after pretraining")
    tic = time.perf_counter()
    final = evaluate(run_dir / "checkpoint.pt", data_dir, out_root / f"eval_final_{key}", env)
    timings["eval_final_seconds"] = time.perf_counter() - tic
    return {"init": init, "final": final, "run_dir": run_dir, "timings": timings}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    data_dir, out_root = Path(args.data_dir).resolve(), Path(args.output_dir).resolve()
    report = Path(args.report_dir).resolve() if args.report_dir else out_root / "report"
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)

    _say(f"generated dataset ({data_dir})")
    tic = time.perf_counter()
    params = {k: getattr(args, k) for k in DATA_DEFAULTS}
    try:
        ensure_data(data_dir, params, args.regenerate)
    except RuntimeError as exc:
        print(f"\ndemo stopped: {exc}", file=sys.stderr)
        return 1
    data_seconds = time.perf_counter() - tic

    keys = ["timemamba", "timesformer"] if args.compare_timesformer else ["timemamba"]
    try:
        results = {key: train_and_evaluate(key, args, data_dir, out_root, env) for key in keys}
    except RuntimeError as exc:  # a stage failed: its own message is above; name the stage and stop
        print(f"\ndemo stopped: {exc}", file=sys.stderr)
        return 1

    _say(f"report ({report})")
    from lavila import demo_report as dr

    clips, sentences, relevancy = mir_tables(data_dir)
    chance = dr.mir_chance(relevancy)
    from lavila.data.ek100 import ActionVocabulary

    manifest = json.loads((data_dir / "manifest.json").read_text())
    ann = data_dir / manifest["ek100"]["annotations"]
    num_actions = len(ActionVocabulary.from_csvs([ann / "EPIC_100_train.csv", ann / "EPIC_100_validation.csv"]))
    summaries = {}
    for key, res in results.items():
        summaries[key] = dr.build_summary(res["init"], res["final"], chance, num_actions, 0.0,
                                          {"model_label": LABELS[key], **res["timings"]})
    curves = {LABELS[k]: dr.read_curves(r["run_dir"]) for k, r in results.items()}
    plots = dr.plot_training_curves(curves, report, {LABELS[k]: s["mir_avg_map_init"] for k, s in summaries.items()},
                                    chance["avg_map"])
    main_key = keys[0]
    final_eval = out_root / f"eval_final_{main_key}"
    import numpy as np

    config = results[main_key]["final"]
    example = dr.plot_retrieval_example(np.load(final_eval / "mir_similarity.npy"), relevancy,
                                        sentences["narration"].astype(str).tolist(),
                                        clips["narration"].astype(str).tolist(),
                                        clip_frame_loader(data_dir, int(config.get("num_frames", 4)),
                                                          int(config.get("crop", 64))),
                                        report / "retrieval_example.png")
    _say("feature extraction and text search over the EK100-style test videos")
    tic = time.perf_counter()
    try:
        found = search_stage(results[main_key]["run_dir"] / "checkpoint.pt", data_dir, out_root, report, env,
                             clips, sentences, relevancy, np.load(final_eval / "mir_similarity.npy"))
    except RuntimeError as exc:
        print(f"\ndemo stopped: {exc}", file=sys.stderr)
        return 1
    summary = summaries[main_key]
    summary["search_seconds"] = time.perf_counter() - tic
    summary["search_relevant_hits"] = found["relevant_hits"]
    summary["search_own_clip_rank"] = found["own_clip_rank"]
    summary["wall_seconds"] = time.perf_counter() - start
    summary["data_seconds"] = data_seconds
    compare = {LABELS[k]: s for k, s in summaries.items() if k != main_key}
    if compare:
        summary["compare"] = {label: {k: v for k, v in s.items() if k.startswith(("mir_", "egoschema", "cls_"))}
                              for label, s in compare.items()}
    metrics = {"chance": {"mir": chance, "egoschema_accuracy": 0.2, "cls_action_top1": 1.0 / num_actions},
               **{LABELS[k]: {"init": r["init"], "final": r["final"],
                              "per_epoch": curves[LABELS[k]]} for k, r in results.items()},
               "retrieval_example": example, "search": found}
    dr.write_json(metrics, report / "metrics.json")
    dr.write_json(summary, report / "summary.json")
    print_results(summary, compare)
    rank = found["own_clip_rank"]
    print(f"\nsearch \"{found['query']}\": {found['relevant_hits']} of {len(found['hits'])} top hits relevant; the "
          f"query's own clip is " + (f"hit #{rank}" if rank else "NOT among them") + " (report/search.html)")
    print(f"\nreport: {report}  ({', '.join(p.name for p in plots.values())}, retrieval_example.png, search.html, "
          f"metrics.json, summary.json)\ntotal {summary['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
