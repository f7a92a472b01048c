"""The zoo recipes train what was released: each configs/zoo/<row>/train.yaml, resolved by its engine's parser (what
``--print-config`` prints: ``lavila.config.resolved_config``), against a table written from the reference's scripts
and engine defaults (tests/data/zoo_reference.yaml); and every ``Upstream:`` line names a reference script that
exists (tests/data/reference_scripts.txt, the reference repo's file list)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lavila import zoo
from lavila.config import resolved_config
from lavila.models.registry import effective_drop_path_rate, get_model_config
from lavila.train.loop import parse_engine_args

DATA = Path(__file__).parent / "data"
REFERENCE = yaml.safe_load((DATA / "zoo_reference.yaml").read_text())["rows"]


def _engine(name: str):
    from lavila.train.finetune_classification import ClassificationEngine
    from lavila.train.finetune_retrieval import RetrievalEngine
    from lavila.train.pretrain import PretrainEngine

    return {"pretrain": PretrainEngine, "finetune_retrieval": RetrievalEngine,
            "finetune_classification": ClassificationEngine}[name]()


def _gpus(script: Path) -> int:
    text = script.read_text()
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", text).group(1))
    return nodes * int(re.search(r"#SBATCH --ntasks-per-node=(\d+)", text).group(1))


def recipe_values(row: str, repo_root: Path, engine_name: str) -> tuple[dict, dict]:
    """(the table's quantities as the recipe resolves them, the resolved config)."""
    engine = _engine(engine_name)
    args = parse_engine_args(engine, ["--config", str(repo_root / "configs/zoo" / row / "train.yaml")])
    cfg = resolved_config(args)
    cls, mir = engine_name == "finetune_classification", engine_name == "finetune_retrieval"
    if engine_name == "pretrain":
        frozen = cfg["freeze_temperature"]
        init = cfg["pretrain_zoo"]
    else:  # the fine-tuning engines build the model's registry config (temperature frozen) from --pretrain-model
        frozen = get_model_config(cfg["model"])["freeze_temperature"]
        entry = zoo.get_entry(cfg["pretrain_model"])
        init = entry.name if entry else cfg["pretrain_model"]
    got = {
        "engine": engine_name, "model": cfg["model"], "clip_length": cfg["clip_length"],
        "batch_size": cfg["batch_size"], "gpus": _gpus(repo_root / "scripts/zoo" / row / "train.sh"),
        "epochs": cfg["epochs"], "lr": cfg["lr"], "fix_lr": cfg["fix_lr"], "warmup_epochs": cfg["warmup_epochs"],
        "lr_start": cfg["lr_start"], "lr_end": cfg["lr_end"], "wd": cfg["wd"], "betas": list(cfg["betas"]),
        "eps": cfg["eps"], "optimizer": cfg["optimizer"],
        "temperature": None if cls else (0.07 if frozen else "learned"),
        "precision": "bf16" if cfg["use_bf16"] else ("fp32" if cfg["disable_amp"] else "fp16"),
        "grad_checkpointing": cfg["grad_checkpointing"],
        "smoothing": cfg["smoothing"] if cls else None, "mixup": cfg["mixup"] if cls else None,
        "cutmix": cfg["cutmix"] if cls else None, "cutmix_variant": cfg["cutmix_variant"] if cls else None,
        "dropout": cfg["dropout_rate"] if cls else None,
        "drop_path_rate": cfg["drop_path_rate"],
        "effective_drop_path": effective_drop_path_rate(cfg["model"], cfg["drop_path_rate"], cfg["drop_path_scope"]),
        "init": init, "mir_loss": cfg["mir_loss_weighting"] if mir else None, "wd_rule": cfg["wd_rule"],
        "epoch_shuffle": "each-epoch" if cls else cfg["epoch_shuffle"],  # the CLS engine always reshuffles
    }
    if engine_name == "pretrain":
        got["project_embed_dim"] = cfg["project_embed_dim"]
        if cfg["pretrain_zoo"] == "deit":
            got["deit_patch_bias"] = cfg["deit_patch_bias"]
    if mir:
        got["margin"] = cfg["margin"]
    if cls:
        got["num_classes"] = cfg["num_classes"]
        got["lr_scaled"] = list(engine.lr_values(args, got["gpus"]))
    return got, cfg


def _expected(ref: dict) -> dict:
    out = {k: v for k, v in ref.items() if k != "script"}
    if "/" not in str(out["init"]) and str(out["init"]).endswith(".pt"):  # the scripts' local checkpoint names
        out["init"] = zoo.get_entry(out["init"]).name
    return out


def test_table_covers_every_zoo_row(repo_root):
    assert sorted(REFERENCE) == sorted(zoo.list_zoo())
    assert sorted(p.name for p in (repo_root / "configs/zoo").iterdir() if (p / "train.yaml").is_file()) == \
        sorted(REFERENCE)


@pytest.mark.parametrize("row", sorted(REFERENCE))
def test_recipe_resolves_to_the_reference_values(row, repo_root):
    ref = REFERENCE[row]
    got, _ = recipe_values(row, repo_root, ref["engine"])
    want = _expected(ref)
    assert set(got) == set(want), f"{row}: table and recipe cover different quantities"
    wrong = {k: (got[k], want[k]) for k in want if got[k] != pytest.approx(want[k])}
    assert not wrong, f"{row}: recipe value != reference value: {wrong}"


def _upstream_lines(repo_root: Path) -> list[tuple[Path, str]]:
    out = []
    for path in sorted([*(repo_root / "configs/zoo").rglob("*.yaml"), *(repo_root / "scripts/zoo").rglob("*.sh")]):
        for line in path.read_text().splitlines():
            m = re.match(r"#\s*Upstream:\s*(\S+)", line)
            if m:
                out.append((path, m.group(1)))
    return out


def test_upstream_lines_name_reference_scripts_that_exist(repo_root):
    scripts = {ln for ln in (DATA / "reference_scripts.txt").read_text().splitlines() if ln and not ln.startswith("#")}
    assert len(scripts) == 36
    lines = _upstream_lines(repo_root)
    assert len(lines) >= 2 * len(REFERENCE)  # every train.yaml and train.sh names its script
    missing = [(str(p.relative_to(repo_root)), name) for p, name in lines if name not in scripts]
    assert not missing, f"Upstream: lines naming scripts the reference does not have: {missing}"
    named = {name for p, name in lines if p.name in ("train.yaml", "train.sh")}
    assert {r["script"] for r in REFERENCE.values()} <= named
