"""`make demo` (lavila/demo.py, lavila/demo_report.py): report writing on fake metrics (fast), the data-reuse check,
and the whole demo at a tiny size (slow)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lavila import demo, demo_report

SUMMARY_FRACTIONS = ("mir_avg_map_init", "mir_avg_map_final", "mir_avg_ndcg_final", "egoschema_acc",
                     "cls_action_top1")


def _fake_run(run_dir: Path, epochs: int = 3, steps_per_epoch: int = 4) -> None:
    run_dir.mkdir(parents=True)
    lines, step = [], 0
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            step += 1
            lines.append({"type": "step", "step": step, "epoch": epoch, "loss": 3.0 - 0.1 * step,
                          "lr": 1e-3 * step / 12, "logit_scale": 14.0})
        lines.append({"type": "train", "epoch": epoch, "train_loss": 3.0 - 0.4 * epoch, "train_lr": 1e-3})
        lines.append({"type": "epoch", "epoch": epoch, "test_avg_map": 0.4 + 0.1 * epoch, "test_avg_ndcg": 0.5,
                      "skipped_samples": 0})
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def _fake_eval(avg_map: float, acc: float, acc1: float) -> dict:
    return {"ek100_mir": {"avg_map": avg_map, "avg_ndcg": avg_map - 0.05, "vis_map": avg_map, "txt_map": avg_map},
            "ek100_cls": {"acc1": acc1, "verb_acc1": 50.0, "noun_acc1": 40.0}, "egoschema": {"accuracy": acc}}


def test_read_curves_and_plots(tmp_path):
    _fake_run(tmp_path / "run")
    curves = demo_report.read_curves(tmp_path / "run")
    assert curves["epoch"] == [1.0, 2.0, 3.0]
    assert curves["test_avg_map"] == pytest.approx([0.4, 0.5, 0.6])
    assert len(curves["loss"]) == len(curves["lr"]) == 12
    paths = demo_report.plot_training_curves({"TimeMamba": curves}, tmp_path / "report", {"TimeMamba": 0.3}, 0.33)
    assert set(paths) == {"loss", "lr", "retrieval_map"}
    for path in paths.values():
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_read_curves_names_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        demo_report.read_curves(tmp_path)


def test_retrieval_example_ranks_by_similarity(tmp_path):
    rng = np.random.default_rng(0)
    relevancy = np.array([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    similarity = relevancy[:, :] + 0.01 * rng.random(relevancy.shape)
    loaded = []

    def load(row: int) -> np.ndarray:
        loaded.append(row)
        return np.full((4, 16, 16, 3), 40 * row, dtype=np.uint8)

    out = demo_report.plot_retrieval_example(similarity, relevancy, ["take cup", "put plate"],
                                             [f"clip {i}" for i in range(6)], load, tmp_path / "ex.png", top_k=3)
    assert out["query"] == "take cup"  # the sentence with the most fully relevant clips
    assert [t["clip_row"] for t in out["top"]] == loaded
    assert sorted(loaded) == [0, 2, 4] and all(t["relevancy"] == 1.0 for t in out["top"])
    sims = [t["similarity"] for t in out["top"]]
    assert sims == sorted(sims, reverse=True)
    assert (tmp_path / "ex.png").stat().st_size > 5000


def test_retrieval_example_rejects_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        demo_report.plot_retrieval_example(np.zeros((3, 2)), np.zeros((2, 3)), ["a", "b", "c"], ["x", "y"],
                                           lambda r: np.zeros((1, 4, 4, 3), np.uint8), tmp_path / "x.png")


def test_pick_search_query_prefers_a_well_retrieved_own_clip():
    relevancy = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    similarity = np.array([[0.9, 0.1, 0.2], [0.8, 0.2, 0.1], [0.1, 0.3, 0.2], [0.2, 0.4, 0.9], [0.1, 0.1, 0.5]])
    # own clips: sentence 0 -> row 1 (ranked 2nd), 1 -> row 2 (ranked 2nd), 2 -> row 3 (ranked 1st)
    assert demo_report.pick_search_query(similarity, relevancy, [1, 2, 3]) == 2
    # a tie on the own clip's rank: the sentence with more fully relevant clips
    assert demo_report.pick_search_query(similarity, relevancy, [1, 2, 4]) == 0


def test_mir_chance_is_below_a_perfect_ranking():
    relevancy = np.kron(np.eye(4), np.ones((3, 1)))  # 12 clips, 4 sentences, 3 relevant clips each
    chance = demo_report.mir_chance(relevancy, trials=5)
    from lavila.evaluation.retrieval import mir_metrics

    perfect = mir_metrics(relevancy + 0.0, relevancy)
    assert perfect["avg_map"] == pytest.approx(1.0)
    assert 0.2 < chance["avg_map"] < 0.7


def test_acceptance_target():
    assert demo_report.acceptance_target(0.1) == pytest.approx(0.5)   # 3 x 0.1 < 0.5: the floor
    assert demo_report.acceptance_target(0.2) == pytest.approx(0.6)   # 3 x init
    assert demo_report.acceptance_target(0.4) == pytest.approx(0.7)   # halfway to 1


def test_summary_keys_and_fractions(tmp_path):
    chance = {"avg_map": 0.33, "avg_ndcg": 0.38}
    summary = demo_report.build_summary(_fake_eval(0.35, 0.2, 5.0), _fake_eval(0.8, 0.6, 45.0), chance, 20, 123.0)
    for key in SUMMARY_FRACTIONS:
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["cls_action_top1"] == pytest.approx(0.45)  # percent -> fraction
    assert summary["wall_seconds"] == 123.0
    assert summary["mir_target_met"] and summary["egoschema_above_chance"]
    path = demo_report.write_json(summary, tmp_path / "r" / "summary.json")
    assert json.loads(path.read_text())["mir_avg_map_final"] == pytest.approx(0.8)


def test_ensure_data_reuses_matching_dataset(tmp_path, monkeypatch):
    data = tmp_path / "demo_data"
    data.mkdir()
    params = dict(demo.DATA_DEFAULTS)
    (data / "manifest.json").write_text(json.dumps({"ok": 1}))
    (data / demo.DATA_STAMP).write_text(json.dumps(params))
    (data / demo.DATA_MARKER).write_text("x")
    calls = []

    def fake_generator(cmd, *a, **k):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        (out / "manifest.json").write_text(json.dumps({"ok": 2}))

    monkeypatch.setattr(demo, "run_stage", fake_generator)
    assert demo.ensure_data(data, params, regenerate=False) == {"ok": 1}
    assert calls == []
    # other settings: the folder is regenerated with them
    assert demo.ensure_data(data, {**params, "seed": 1}, regenerate=False) == {"ok": 2}
    assert calls and calls[0][calls[0].index("--seed") + 1] == "1"
    assert json.loads((data / demo.DATA_STAMP).read_text())["seed"] == 1


def test_ensure_data_never_deletes_a_foreign_folder(tmp_path, monkeypatch):
    data = tmp_path / "my_real_data"
    data.mkdir()
    (data / "precious.csv").write_text("a,b\n")
    monkeypatch.setattr(demo, "run_stage", lambda *a, **k: pytest.fail("must not generate"))
    with pytest.raises(RuntimeError, match="not made by the demo"):
        demo.ensure_data(data, dict(demo.DATA_DEFAULTS), regenerate=True)
    assert (data / "precious.csv").is_file()


def test_pretrain_argv_uses_manifest_paths(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    manifest = {"chunk_len": 15.0, "ego4d": {"root": "ego4d/videos", "metadata": "ego4d/ego4d_train.pkl"},
                "ek100": {"root": "ek100/videos", "mir_test": "ek100/test.csv"}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    args = demo.build_parser().parse_args(["--epochs", "2"])
    argv = demo.pretrain_argv(demo.CONFIGS["timemamba"], data, tmp_path / "run", args)
    assert argv[argv.index("--train-metadata") + 1] == str(data / "ego4d/ego4d_train.pkl")
    assert argv[argv.index("--val-metadata") + 1] == str(data / "ek100/test.csv")
    assert argv[argv.index("--epochs") + 1] == "2" and "--batch-size" not in argv
    assert Path(argv[argv.index("--config") + 1]).is_file()


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path):
    """The real stages (generator, eval_zeroshot.py, main_pretrain.py) at a tiny size; a few minutes on 2 cores."""
    rc = demo.main(["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out"),
                    "--ego4d-videos", "2", "--ek100-test-videos", "1", "--egoschema-questions", "5",
                    "--video-sec", "20", "--epochs", "1", "--batch-size", "8"])
    assert rc == 0
    report = tmp_path / "out" / "report"
    summary = json.loads((report / "summary.json").read_text())
    for key in SUMMARY_FRACTIONS:
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["wall_seconds"] > 0 and math.isfinite(summary["wall_seconds"])
    for name in ("loss.png", "lr.png", "retrieval_map.png", "retrieval_example.png", "metrics.json", "search.html"):
        assert (report / name).stat().st_size > 1000, name
    search = json.loads((report / "metrics.json").read_text())["search"]
    assert len(search["hits"]) == demo.SEARCH_TOP_K and search["query"]
    stamp = (tmp_path / "data" / "manifest.json").stat().st_mtime
    rc = demo.main(["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out"),
                    "--ego4d-videos", "2", "--ek100-test-videos", "1", "--egoschema-questions", "5",
                    "--video-sec", "20", "--epochs", "1", "--batch-size", "8"])
    assert rc == 0 and (tmp_path / "data" / "manifest.json").stat().st_mtime == stamp  # data reused


@pytest.mark.slow
def test_demo_default_size_meets_the_readme_mir_target(tmp_path):
    """`make demo` at its default sizes (under a minute on the idle 2-core machine) meets the MIR target the README
    promises, with numbers near the README's expected output."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = re.search(r"EK100-style MIR avg mAP\s+([\d.]+)\s+([\d.]+)", readme)
    assert shown and "MIR target (>= 0.5 and >= min(3 x init, halfway from init to 1)" in readme
    rc = demo.main(["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "report" / "summary.json").read_text())
    init, final = summary["mir_avg_map_init"], summary["mir_avg_map_final"]
    assert final >= demo_report.acceptance_target(init) == pytest.approx(summary["mir_avg_map_target"])
    assert summary["mir_target_met"]
    assert init == pytest.approx(float(shown.group(1)), abs=0.05)
    assert final == pytest.approx(float(shown.group(2)), abs=0.1)
