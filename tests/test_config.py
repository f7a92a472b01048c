"""Config system: YAML values become defaults, CLI flags win, unknown keys and wrong types are clear errors."""
from __future__ import annotations

import argparse

import pytest
import yaml

from lavila.config import parse_args, resolved_config, save_resolved_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--model", default="CLIP_VITB16")
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999))
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--use-bf16", action="store_true")
    p.add_argument("--fused-decode-crop", action="store_true", dest="fused_decode_crop")
    p.add_argument("--no-fused-decode-crop", action="store_false", dest="fused_decode_crop")
    p.add_argument("--output-dir", default="./")
    return p


def _write(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_yaml_values_become_defaults_and_cli_overrides(tmp_path):
    cfg = _write(tmp_path, {"batch-size": 4, "lr": "1e-3", "model": "CLIP_VITT16", "use_bf16": True,
                            "betas": [0.8, 0.95]})
    args = parse_args(_parser(), ["--config", cfg, "--batch-size", "8"])
    assert args.batch_size == 8  # CLI wins
    assert args.lr == pytest.approx(1e-3)  # YAML 1.1 string "1e-3" converted with the flag's type
    assert args.model == "CLIP_VITT16" and args.use_bf16 is True
    assert args.betas == [0.8, 0.95]
    assert args.optimizer == "adamw"  # untouched default
    # the config flag comes after the override too
    args = parse_args(_parser(), ["--model", "X", "--config", cfg])
    assert args.model == "X" and args.batch_size == 4


def test_without_config_plain_defaults():
    args = parse_args(_parser(), [])
    assert args.batch_size == 16 and args.config is None


def test_unknown_key_names_key_and_nearest_flag(tmp_path, capsys):
    cfg = _write(tmp_path, {"batch_sise": 4})
    with pytest.raises(SystemExit):
        parse_args(_parser(), ["--config", cfg])
    err = capsys.readouterr().err
    assert "unknown key 'batch_sise'" in err and "--batch-size" in err


@pytest.mark.parametrize("data, fragment", [
    ({"batch-size": "many"}, "batch-size"),
    ({"batch-size": 2.5}, "integer"),
    ({"use-bf16": "yes"}, "true or false"),
    ({"optimizer": "lion"}, "not one of"),
    ({"betas": [0.9]}, "takes 2 values"),
])
def test_wrong_type_is_a_clear_error(tmp_path, capsys, data, fragment):
    with pytest.raises(SystemExit):
        parse_args(_parser(), ["--config", _write(tmp_path, data)])
    assert fragment in capsys.readouterr().err


def test_store_false_switch_and_missing_file(tmp_path, capsys):
    args = parse_args(_parser(), ["--config", _write(tmp_path, {"no-fused-decode-crop": True})])
    assert args.fused_decode_crop is False
    args = parse_args(_parser(), ["--config", _write(tmp_path, {"fused_decode_crop": True})])
    assert args.fused_decode_crop is True
    with pytest.raises(SystemExit):
        parse_args(_parser(), ["--config", str(tmp_path / "nope.yaml")])
    assert "config file not found" in capsys.readouterr().err


def test_required_flag_satisfied_by_yaml(tmp_path):
    p = _parser()
    p.add_argument("--pretrain-model", required=True)
    args = parse_args(p, ["--config", _write(tmp_path, {"pretrain-model": "a.pt"})])
    assert args.pretrain_model == "a.pt"


def test_resolved_config_round_trips(tmp_path):
    args = parse_args(_parser(), ["--batch-size", "3", "--use-bf16"])
    path = save_resolved_config(args, tmp_path / "out")
    assert path is not None and path.name == "config.yaml"
    saved = yaml.safe_load(path.read_text())
    assert saved["batch_size"] == 3 and saved["betas"] == [0.9, 0.999] and "config" not in saved
    again = parse_args(_parser(), ["--config", str(path)])
    assert resolved_config(again) == resolved_config(args)
