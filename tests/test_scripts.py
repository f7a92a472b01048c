"""scripts/: syntax, sbatch headers, configs that exist and parse with their engine, print-the-command mode."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from lavila import zoo

REPO = Path(__file__).resolve().parents[1]
ZOO_SCRIPTS = sorted((REPO / "scripts" / "zoo").glob("*/*.sh"))
ALL_SCRIPTS = sorted({*REPO.glob("scripts/**/*.sh"), *REPO.glob("tests/slurm/*.sh")})
LAUNCH_RE = re.compile(r"^launch (\S+) (\S+) (\S+) \"\$@\"$", re.M)
SBATCH_NEEDED = ("--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task", "--time", "--output",
                 "--signal")


def _launch_line(script: Path) -> tuple[str, str, str]:
    m = LAUNCH_RE.search(script.read_text())
    assert m, f"{script}: no 'launch KIND ENGINE CONFIG \"$@\"' line"
    return m.group(1), m.group(2), m.group(3)


def _sbatch(script: Path) -> dict[str, str]:
    out = {}
    for line in script.read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line[len("#SBATCH "):].partition("=")
            out[key.strip()] = value.strip()
    return out


def _engine_parser(engine: str):
    """The argparse parser of an entry script (main_*.py -> its Engine class -> lavila.train.loop.build_parser)."""
    text = (REPO / engine).read_text()
    m = re.search(r"from (lavila\.train\.\w+) import (\w+Engine)", text)
    assert m, f"{engine}: cannot find its Engine class"
    import importlib

    from lavila.train.loop import build_parser

    return build_parser(getattr(importlib.import_module(m.group(1)), m.group(2))())


def _command(stdout: str) -> list[str]:
    """The DRY_RUN command without its leading ``cd <repository root> &&``."""
    words = shlex.split(stdout.strip())
    assert words[:3] == ["cd", str(REPO), "&&"], words[:3]
    return words[3:]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.pop("LAVILA_CONFIG", None)
    env.update(extra)
    return env


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_bash_syntax(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_every_zoo_row_has_train_and_infer_scripts():
    for name in zoo.list_zoo():
        for kind in ("train", "infer"):
            assert (REPO / "scripts" / "zoo" / name / f"{kind}.sh").is_file(), (name, kind)
    assert {p.parent.name for p in ZOO_SCRIPTS} == set(zoo.list_zoo())


@pytest.mark.parametrize("script", ZOO_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_headers_config_and_model(script):
    headers = _sbatch(script)
    for key in SBATCH_NEEDED:
        assert key in headers, f"{script}: no #SBATCH {key}"
    assert headers["--signal"].startswith("B:USR1@") and "--requeue" in headers
    kind, engine, config = _launch_line(script)
    assert (REPO / engine).is_file(), engine
    cfg_path = REPO / config
    assert cfg_path.is_file(), config
    cfg = yaml.safe_load(cfg_path.read_text())
    entry = zoo.get_entry(script.parent.name)
    assert cfg["model"] == entry.model
    models = pytest.importorskip("lavila.models")
    assert cfg["model"] in models.list_models()
    # the config's keys and values are valid flags of the engine the script runs
    from lavila.config import apply_config

    apply_config(_engine_parser(engine), cfg, source=config)
    if script.name == "train.sh":  # the released recipes' global batch: 512 pretrain, 768 / 512 fine-tuning
        gpus = int(headers["--ntasks-per-node"]) * int(headers["--nodes"])
        expected = {"pretrain": 512}.get(entry.task, 768 if "timesformer" in entry.name else 512)
        assert cfg["batch-size"] * gpus == expected
        assert cfg["clip-length"] == entry.num_frames
    else:
        assert cfg["resume"] == entry.name and cfg["evaluate"] is True


@pytest.mark.parametrize("script", [p for p in ZOO_SCRIPTS if p.name.startswith("infer")],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_infer_script_prints_a_command_the_engine_accepts(script, tmp_path):
    env = _env(DRY_RUN="1", DATA_ROOT=str(tmp_path / "data"), OUTPUT_DIR=str(tmp_path / "out"), NPROC_PER_NODE="1")
    res = subprocess.run(["bash", str(script), "--print-freq", "7"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=30)
    assert res.returncode == 0, res.stderr
    cmd = _command(res.stdout)
    kind, engine, config = _launch_line(script)
    i = cmd.index(engine)
    assert cmd[i - 1] == "-u" and "srun" not in cmd and "torch.distributed.run" not in cmd
    argv = cmd[i + 1:]
    assert argv[:2] == ["--config", config] and argv[-2:] == ["--print-freq", "7"]  # extra arguments forwarded
    from lavila.config import parse_args

    args = parse_args(_engine_parser(engine), [a if a != config else str(REPO / config) for a in argv])
    entry = zoo.get_entry(script.parent.name)
    assert args.evaluate and args.resume == entry.name and args.print_freq == 7
    assert args.output_dir == str(tmp_path / "out")
    assert str(tmp_path / "data") in (getattr(args, "root_val", None) or args.root)


def test_launch_uses_srun_under_slurm_and_torchrun_locally(tmp_path):
    script = REPO / "scripts" / "zoo" / "clip_timesformer_vanilla_base_ego4d4m_bs512_f4" / "train.sh"
    base = _env(DRY_RUN="1")
    slurm = _command(subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                                    env={**base, "SLURM_JOB_ID": "42"}).stdout)
    assert slurm[:2] == ["srun", "--kill-on-bad-exit=1"] and "main_pretrain.py" in slurm
    local = _command(subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                                    env={**base, "NPROC_PER_NODE": "4"}).stdout)
    assert local[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    override = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                              env={**base, "CHECKPOINT": "x.pt", "LAVILA_CONFIG": "configs/tests/pretrain_tiny.yaml"})
    out = _command(override.stdout)
    assert out[out.index("--config") + 1] == "configs/tests/pretrain_tiny.yaml"
    assert out[out.index("--resume") + 1] == "x.pt"


def test_missing_config_is_a_clear_error(tmp_path):
    script = REPO / "scripts" / "zoo" / "deit_vit_tiny_ego4d4m_bs512_f16" / "infer.sh"
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                         env=_env(DRY_RUN="1", LAVILA_CONFIG="configs/nope.yaml"))
    assert res.returncode == 2 and "config not found" in res.stderr and "configs/nope.yaml" in res.stderr


def test_test_configs_parse_with_the_pretrain_engine():
    from lavila.config import apply_config

    for name in ("pretrain_tiny", "infer_tiny"):
        cfg = yaml.safe_load((REPO / "configs" / "tests" / f"{name}.yaml").read_text())
        apply_config(_engine_parser("main_pretrain.py"), cfg, source=name)


def test_submitit_launcher_help_and_bad_engine():
    py = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else "python3"
    ok = subprocess.run([py, str(REPO / "scripts" / "submitit_launch.py"), "--help"], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0 and "--rendezvous" in ok.stdout
    bad = subprocess.run([py, str(REPO / "scripts" / "submitit_launch.py"), "--engine", "nope.py"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "nope.py: no such file" in bad.stderr


_MIR_TRAIN = REPO / "scripts" / "zoo" / "clip_timesformer_vanilla_base_ego4d4m_bs512_f4" / "train.sh"


def _dry(tmp_path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(_MIR_TRAIN)], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          env=_env(DRY_RUN="1", NPROC_PER_NODE="1", **env))


def test_relevancy_follows_ek100_mir_test_and_is_passed_only_when_given(tmp_path):
    cmd = _command(_dry(tmp_path, EK100_MIR_TEST="/data/my_test.csv").stdout)
    assert cmd[cmd.index("--val-metadata") + 1] == "/data/my_test.csv"
    assert "--relevancy-path" not in cmd  # the engine's default: beside /data/my_test.csv, else rebuilt
    cmd = _command(_dry(tmp_path, EK100_MIR_RELEVANCY="/data/rel.pkl").stdout)
    assert cmd[cmd.index("--relevancy-path") + 1] == "/data/rel.pkl"


def test_absolute_lavila_config_is_used_as_is(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text((REPO / "configs" / "tests" / "pretrain_tiny.yaml").read_text())
    res = _dry(tmp_path, LAVILA_CONFIG=str(config))
    assert res.returncode == 0, res.stderr
    cmd = _command(res.stdout)
    assert cmd[cmd.index("--config") + 1] == str(config)


def test_python_without_torch_is_named_with_the_fix(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    res = subprocess.run(["bash", str(_MIR_TRAIN)], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                         env=_env(PYTHON=str(fake), NPROC_PER_NODE="1", OUTPUT_DIR=str(tmp_path / "out")))
    assert res.returncode == 2
    assert f"{fake} cannot import torch" in res.stderr and "PYTHON=" in res.stderr
