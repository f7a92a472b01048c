"""Issue 15, sections 3 and 4 at the command line: ``--print-config`` on every entry script, and known errors that end
an entry script with one line ``error: ...`` (exit status 2, no traceback; ``--debug`` / ``LAVILA_DEBUG=1`` show it).

The entry scripts run in-process through ``runpy`` (their real ``sys.exit(main(...))``); one case runs as a real
subprocess."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from engine_helpers import TINY_MODEL, paths, synthetic_root

from lavila.data.annotations import AnnotationError
from lavila.data.egoschema import load_questions
from lavila.data.ek100 import read_ek100_csv
from lavila.train.errors import TrainingError

REPO = Path(__file__).resolve().parents[1]
EK100_HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
                "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
GOOD_ROW = "P01_11_0,P01,P01_11,00:00:00.560,00:00:00.00,00:00:01.89,1,113,take plate,take,0,plate,2,['plate'],[2]\n"
BAD_TIME_ROW = "P01_11_1,P01,P01_11,00:00:01.700,00:0x:01.56,00:00:02.45,93,147,put plate,put,1,plate,2,['plate'],[2]\n"


def _run_script(script: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run an entry script as ``__main__`` with ``argv``; (exit status, stdout, stderr)."""
    capsys.readouterr()
    old = sys.argv
    sys.argv = [script, *argv]
    try:
        runpy.run_path(str(REPO / script), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_error_line(code: int, err: str, *expected: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture
def random_bytes(tmp_path) -> Path:
    path = tmp_path / "weights.pt"
    path.write_bytes(bytes(range(7, 256)) * 8)  # no zip header, no pickle protocol header
    return path


@pytest.fixture
def bad_csv(tmp_path) -> Path:
    path = tmp_path / "EPIC_100_train.csv"
    path.write_text(EK100_HEADER + GOOD_ROW + BAD_TIME_ROW)
    return path


# ---- --print-config ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["main_pretrain.py", "main_finetune_retrieval.py",
                                    "main_finetune_classification.py"])
def test_print_config_prints_what_config_yaml_gets_and_touches_nothing(script, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    argv = ["--output-dir", str(out_dir), "--batch-size", "3", "--lr", "0.5", "--print-config"]
    code, out, err = _run_script(script, argv, capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["batch_size"] == 3 and printed["lr"] == 0.5 and printed["output_dir"] == str(out_dir)
    assert "print_config" not in printed and "config" not in printed and "debug" not in printed
    assert not out_dir.exists()  # no data read (the default datasets/... paths do not exist), nothing written
    # the printed YAML is a config file that gives the same configuration back
    (tmp_path / "printed.yaml").write_text(out)
    code, again, _ = _run_script(script, ["--config", str(tmp_path / "printed.yaml"), "--print-config"], capsys)
    assert code == 0 and yaml.safe_load(again) == printed


def test_print_config_of_eval_zeroshot(tmp_path, capsys):
    argv = ["--model", "CLIP_VITT16", "--mir-metadata", str(tmp_path / "absent.csv"), "--batch-size", "5",
            "--output-dir", str(tmp_path / "out"), "--print-config"]
    code, out, err = _run_script("eval_zeroshot.py", argv, capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["batch_size"] == 5 and printed["model"] == "CLIP_VITT16" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [(["--batch-size", "0"], "--batch-size must be >= 1"),
                                            (["--patch-dropout", "1.5"], "--patch-dropout"),
                                            (["--model", "CLIP_VITX"], "--model 'CLIP_VITX'"),
                                            (["--batch-size", "four"], "--batch-size")])
def test_print_config_validates_the_flags(argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_script("main_pretrain.py", [*argv, "--print-config"], capsys)
    _one_error_line(code, err, expected)
    assert out == ""


# ---- one error line per known failure -------------------------------------------------------------------------

def test_missing_reference_default_path_names_path_and_layout(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run_script("main_pretrain.py", ["--device", "cpu"], capsys)
    _one_error_line(code, err, "datasets/Ego4D/videos_320px_15sec/", "--root", "chunks", "ego4d_train.pkl")


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("batch_sise: 4\n")
    code, _, err = _run_script("main_pretrain.py", ["--config", str(cfg)], capsys)
    _one_error_line(code, err, "batch_sise", str(cfg), "--batch-size")


def test_random_bytes_as_pretrained_checkpoint(tmp_path_factory, tmp_path, random_bytes, capsys):
    p = paths(synthetic_root(tmp_path_factory))
    argv = ["--root", p["ek_root"], "--train-metadata", p["mir_train"], "--val-metadata", p["mir_test"],
            "--output-dir", str(tmp_path / "out"), *TINY_MODEL, "--pretrain-model", str(random_bytes)]
    code, _, err = _run_script("main_finetune_retrieval.py", argv, capsys)
    line = _one_error_line(code, err, str(random_bytes), "not a torch checkpoint")
    assert "allow-list" not in line and "unsafe" not in line


def test_annotation_row_that_does_not_parse(tmp_path, bad_csv, capsys):
    argv = ["--root", str(tmp_path), "--train-metadata", str(bad_csv), "--val-metadata", str(bad_csv),
            "--random-init", "--output-dir", str(tmp_path / "out"), "--device", "cpu"]
    code, _, err = _run_script("main_finetune_classification.py", argv, capsys)
    _one_error_line(code, err, str(bad_csv), "line 3", "column start_timestamp", "00:0x:01.56")


def test_eval_zeroshot_bad_checkpoint_and_bad_flags(tmp_path_factory, tmp_path, random_bytes, capsys):
    p = paths(synthetic_root(tmp_path_factory))  # valid annotations and videos: the start-up check passes
    argv = ["--resume", str(random_bytes), "--mir-metadata", p["mir_test"], "--mir-root", p["ek_root"],
            "--output-dir", str(tmp_path / "out"), "--device", "cpu"]
    code, _, err = _run_script("eval_zeroshot.py", argv, capsys)
    _one_error_line(code, err, str(random_bytes), "not a torch checkpoint")
    code, _, err = _run_script("eval_zeroshot.py", ["--model", "CLIP_VITT16"], capsys)
    _one_error_line(code, err, "nothing to evaluate", "--mir-metadata")


def test_video_that_cannot_be_read_in_evaluation(tmp_path_factory, tmp_path, capsys):
    p = paths(synthetic_root(tmp_path_factory))
    empty = tmp_path / "videos"
    empty.mkdir()
    argv = ["--model", "CLIP_TimeSformerB16", "--model-overrides", "embed_dim=32", "depth=1", "num_heads=2",
            "text_width=32", "text_layers=1", "text_heads=2", "img_size=32", "num_frames=2", "--mir-root", str(empty),
            "--mir-metadata", p["mir_test"], "--output-dir", str(tmp_path / "out"), "--device", "cpu"]
    code, _, err = _run_script("eval_zeroshot.py", argv, capsys)
    # caught by the start-up check (lavila.data.checks), before any model is built
    _one_error_line(code, err, p["mir_test"], "video 'P02_01' not found under " + str(empty), "--video-chunk-length")


def test_debug_flag_and_env_show_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainingError, match="datasets/Ego4D"):
        _run_script("main_pretrain.py", ["--device", "cpu", "--debug"], capsys)
    monkeypatch.setenv("LAVILA_DEBUG", "1")
    with pytest.raises(TrainingError, match="datasets/Ego4D"):
        _run_script("main_pretrain.py", ["--device", "cpu"], capsys)


@pytest.mark.slow
def test_real_process_exit_status_and_stderr(tmp_path_factory, tmp_path, random_bytes):
    p = paths(synthetic_root(tmp_path_factory))  # valid annotations and videos: the start-up check passes
    env = {k: v for k, v in os.environ.items() if k != "LAVILA_DEBUG"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, str(REPO / "eval_zeroshot.py"), "--resume", str(random_bytes),
                           "--mir-metadata", p["mir_test"], "--mir-root", p["ek_root"], "--device", "cpu",
                           "--output-dir", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    _one_error_line(proc.returncode, proc.stderr, "not a torch checkpoint")


# ---- annotation errors name file, line and column ---------------------------------------------------------------

def test_ek100_csv_errors_name_file_line_column(tmp_path, bad_csv):
    with pytest.raises(AnnotationError, match=r"EPIC_100_train.csv, line 3, column start_timestamp"):
        read_ek100_csv(bad_csv)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(EK100_HEADER + GOOD_ROW + GOOD_ROW.strip() + ",extra,fields\n")
    with pytest.raises(AnnotationError, match=r"ragged.csv, line 3"):
        read_ek100_csv(ragged)


def test_egoschema_json_error_names_line_and_column(tmp_path):
    path = tmp_path / "questions.json"
    path.write_text('[\n  {"q_uid": "a",\n   "option 0": x}\n]\n')
    with pytest.raises(AnnotationError, match=r"questions.json, line 3, column 16"):
        load_questions(path)
