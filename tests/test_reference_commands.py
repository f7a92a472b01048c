"""Issue 15, section 3: the python command lines of the reference's 36 scripts (tests/data/reference_commands.yaml,
read from video-mamba-suite's egocentric-understanding/scripts) are accepted by our entry scripts with only the file
name changed, and ``--print-config`` shows their values and the reference's defaults for what they leave out."""
from __future__ import annotations

import argparse
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from lavila.train import loop
from lavila.train.finetune_classification import ClassificationEngine
from lavila.train.finetune_retrieval import RetrievalEngine
from lavila.train.pretrain import PretrainEngine

REPO = Path(__file__).resolve().parents[1]
COMMANDS = yaml.safe_load((Path(__file__).parent / "data" / "reference_commands.yaml").read_text())
ENGINES = {"main_pretrain.py": PretrainEngine, "main_finetune_retrieval.py": RetrievalEngine,
           "main_finetune_classification.py": ClassificationEngine}
REFERENCE_ENGINES = {"engine/main_lavila_pretrain.py": "main_pretrain.py",
                     "engine/main_lavila_finetune_mir.py": "main_finetune_retrieval.py",
                     "engine/main_lavila_finetune_cls.py": "main_finetune_classification.py"}


def _printed(engine_cls: type, argv: list[str], capsys) -> dict:
    capsys.readouterr()
    assert loop.main(engine_cls(), [*argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _given(parser: argparse.ArgumentParser, argv: list[str]) -> dict:
    """dest -> value for every flag on the command line, converted as argparse does (the values the line sets)."""
    given, i = {}, 0
    while i < len(argv):
        action = parser._option_string_actions[argv[i]]
        if action.nargs == 0:
            given[action.dest], i = action.const, i + 1
            continue
        n = {None: 1, "+": 1, "*": 1}.get(action.nargs, action.nargs)
        values = [action.type(v) if action.type else v for v in argv[i + 1:i + 1 + n]]
        given[action.dest] = values if action.nargs in ("+", "*") or isinstance(action.nargs, int) else values[0]
        i += 1 + n
    return given


def test_fixture_holds_the_36_scripts_with_their_engines():
    assert len(COMMANDS) == 36 and len({c["source"] for c in COMMANDS}) == 36
    kinds = {c["source"].split("/")[1] for c in COMMANDS}
    assert kinds == {"pretrain", "mir_zs", "egoschema_zs", "mir_ft", "cls_ft"}
    for c in COMMANDS:
        assert REFERENCE_ENGINES[c["engine"]] == c["ours"], c["source"]


@pytest.mark.parametrize("entry", COMMANDS, ids=[Path(c["source"]).stem for c in COMMANDS])
def test_reference_command_line_is_accepted_with_its_values(entry, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, not even the ./work_dirs output folder
    argv = shlex.split(entry["command"])
    engine_cls = ENGINES[entry["ours"]]
    config = _printed(engine_cls, argv, capsys)
    for dest, value in _given(loop.build_parser(engine_cls()), argv).items():
        assert config[dest] == (list(value) if isinstance(value, tuple) else value), (entry["source"], dest)
    assert not any(tmp_path.iterdir())


def _config_of(name: str, capsys) -> dict:
    entry = next(c for c in COMMANDS if Path(c["source"]).stem == name)
    return _printed(ENGINES[entry["ours"]], shlex.split(entry["command"]), capsys)


def test_key_values_of_reference_lines(capsys):
    cls = _config_of("run_slurm_finetune_cls_bs512_timesformer", capsys)
    assert (cls["optimizer"], cls["wd"], cls["batch_size"], cls["clip_length"]) == ("sgd", 5e-4, 96, 16)
    assert cls["use_bf16"] and cls["grad_checkpointing"] and cls["fused_decode_crop"]
    # what the line leaves out: the reference engine's defaults, data paths included
    assert (cls["lr"], cls["epochs"], cls["warmup_epochs"], cls["drop_path_rate"], cls["dropout_rate"]) == \
        (3e-3, 100, 2, 0.1, 0.5)
    assert cls["root"] == "s-in-hdd:s3://videos/epic/videos_short320_chunked_15s/"
    assert cls["train_metadata"] == "datasets/EK100/epic-kitchens-100-annotations/EPIC_100_train.csv"
    assert cls["val_metadata"] == "datasets/EK100/epic-kitchens-100-annotations/EPIC_100_validation.csv"

    mir = _config_of("run_slurm_finetune_mir_bs512_timesformer", capsys)
    assert mir["use_zero"] and mir["model"] == "CLIP_TimeSformerB16" and mir["batch_size"] == 96
    assert mir["train_metadata"].endswith("retrieval_annotations/EPIC_100_retrieval_train.csv")

    ego = _config_of("run_slurm_pretrain_bs512_timesformer_infer_egoschema", capsys)
    assert ego["evaluate"] and ego["evaluate_task"] == "egoschema" and ego["dataset_val"] == "egoschema"
    assert ego["val_metadata"] == "./datasets/Ego4D/egoschema_questions.json" and ego["clip_length"] == 16

    vivim = _config_of("run_slurm_lavila_pretrain_bs512_vivim_small_gpu16_f16", capsys)
    assert vivim["train_metadata_aux"] == ["datasets/Ego4D/ego4d_train.narrator_63690737.return_10.pkl"]
    assert vivim["model"] == "CLIP_ViViM_small" and vivim["fix_lr"] and vivim["freeze_temperature"]

    pre = _config_of("run_slurm_pretrain_bs512", capsys)
    assert pre["model"] == "CLIP_VITB16" and pre["pretrain_zoo"] == "openai" and pre["clip_length"] == 4
    assert pre["train_metadata"] == "datasets/Ego4D/ego4d_train.pkl" and (pre["lr"], pre["wd"]) == (3e-5, 0.01)


def test_reference_lines_through_the_real_entry_scripts(tmp_path, capsys, monkeypatch):
    """One line per engine, as ``<our script> <the reference's arguments> --print-config`` (the script file runs as
    ``__main__``)."""
    monkeypatch.chdir(tmp_path)
    picks = {}
    for c in COMMANDS:
        picks.setdefault(c["ours"], c)
    for c in picks.values():
        monkeypatch.setattr(sys, "argv", [c["ours"], *shlex.split(c["command"]), "--print-config"])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(REPO / c["ours"]), run_name="__main__")
        assert exit_info.value.code == 0, c["source"]
        assert yaml.safe_load(capsys.readouterr().out)["clip_length"] == int(c["command"].split("--clip-length ")[1]
                                                                             .split()[0])
    assert not any(tmp_path.iterdir())


# ---- the lines run, with their meaning: the reference's arguments, then data paths and a tiny model appended -----

RUN_LINES = ("run_slurm_pretrain_bs512_timesformer", "run_slurm_finetune_mir_bs512_timesformer",
             "run_slurm_finetune_cls_bs512_timesformer", "run_slurm_pretrain_bs512_timesformer_infer_egoschema")


@pytest.mark.slow  # ~1 min: four tiny runs on generated data
def test_reference_lines_run_on_generated_data(tmp_path_factory, tmp_path, monkeypatch):
    from engine_helpers import TINY_MODEL, paths, synthetic_root, tiny_pretrained_checkpoint

    root = synthetic_root(tmp_path_factory)
    p = paths(root)
    ckpt = str(tiny_pretrained_checkpoint(tmp_path_factory))
    monkeypatch.chdir(tmp_path)  # the lines' ./work_dirs/... outputs land here
    data = {"main_pretrain.py": ["--root", p["ego4d_root"], "--train-metadata", p["ego4d_meta"],
                                 "--root-val", p["ek_root"], "--val-metadata", p["mir_test"]],
            "main_finetune_retrieval.py": ["--root", p["ek_root"], "--train-metadata", p["mir_train"],
                                           "--val-metadata", p["mir_test"], "--pretrain-model", ckpt],
            "main_finetune_classification.py": ["--root", p["ek_root"], "--train-metadata", p["cls_train"],
                                                "--val-metadata", p["cls_val"], "--pretrain-model", ckpt]}
    tiny = [*TINY_MODEL, "--batch-size", "2", "--epochs", "1"]
    for name in RUN_LINES:
        entry = next(c for c in COMMANDS if Path(c["source"]).stem == name)
        argv = shlex.split(entry["command"])
        if "--evaluate" in argv:  # EgoSchema zero-shot: the released checkpoint -> a tiny one, videos generated
            extra = ["--resume", ckpt, "--root-val", str(root / "egoschema" / "videos"),
                     "--val-metadata", str(root / "egoschema" / "questions.json"), *tiny]
        else:
            extra = [*data[entry["ours"]], *tiny]
        engine = ENGINES[entry["ours"]]()
        summary = loop.run(engine, [*argv, *extra])
        assert summary["status"] in ("finished", "evaluated"), name
        out = Path(summary["output_dir"])
        assert out.parts[0] == "work_dirs"  # the line's own --output-dir
        config = yaml.safe_load((out / "config.yaml").read_text())
        if name.endswith("egoschema"):
            assert summary["metrics"]["questions"] == 1
        else:
            assert config["fused_decode_crop"] and config["epochs"] == 1 and config["clip_length"] == 2
            assert config["use_bf16"] == ("--use-bf16" in argv) and config["fix_lr"] == ("--fix-lr" in argv)
        if "cls" in name:
            assert config["optimizer"] == "sgd" and config["wd"] == 5e-4
        if "mir_bs512_timesformer" in name:
            assert config["use_zero"]
