"""Bad configuration fails before any model is built: unknown key, wrong type, missing data root / metadata."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from engine_helpers import pretrain_args, synthetic_root

from lavila.train import loop
from lavila.train.pretrain import PretrainEngine


class ModelBuilt(AssertionError):
    pass


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to build a model fails the test."""
    def refuse(self, args):
        raise ModelBuilt("the model was built before the configuration error was reported")

    monkeypatch.setattr(PretrainEngine, "build_model", refuse)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_root(tmp_path_factory)


def _config(tmp_path: Path, values: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _exits_with_message(capsys, argv: list[str], *expected: str) -> None:
    with pytest.raises(SystemExit) as info:
        loop.run(PretrainEngine(), argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err


def test_unknown_yaml_key_names_key_and_nearest_flag(data, tmp_path, capsys, no_model):
    argv = pretrain_args(data, tmp_path / "out", "--config", _config(tmp_path, {"batch_sise": 4}))
    _exits_with_message(capsys, argv, "batch_sise", "--batch-size")
    assert not (tmp_path / "out" / "config.yaml").exists()


@pytest.mark.parametrize("values, expected", [({"batch_size": "four"}, "batch_size"),
                                              ({"lr": [1, 2]}, "lr"),
                                              ({"optimizer": "adam"}, "adamw")])
def test_wrong_type_or_choice_in_yaml_is_an_error(data, tmp_path, capsys, no_model, values, expected):
    _exits_with_message(capsys, pretrain_args(data, tmp_path, "--config", _config(tmp_path, values)), expected)


def test_wrong_type_on_command_line_is_an_error(data, tmp_path, capsys, no_model):
    _exits_with_message(capsys, pretrain_args(data, tmp_path, "--batch-size", "four"), "--batch-size")


def test_unknown_command_line_flag_is_an_error(data, tmp_path, capsys, no_model):
    _exits_with_message(capsys, pretrain_args(data, tmp_path, "--batch-sise", "4"), "--batch-sise")


def test_missing_data_root_fails_before_the_model(data, tmp_path, no_model):
    argv = pretrain_args(data, tmp_path, "--batch-size", "4")
    argv[argv.index("--root") + 1] = str(tmp_path / "no_such_videos")
    with pytest.raises(FileNotFoundError, match="no_such_videos"):
        loop.run(PretrainEngine(), argv)


def test_missing_metadata_fails_before_the_model(data, tmp_path, no_model):
    argv = pretrain_args(data, tmp_path, "--batch-size", "4")
    argv[argv.index("--train-metadata") + 1] = str(tmp_path / "missing.pkl")
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        loop.run(PretrainEngine(), argv)


def test_entry_point_reports_missing_root_in_one_line(data, tmp_path, no_model):
    argv = pretrain_args(data, tmp_path, "--batch-size", "4")
    argv[argv.index("--root") + 1] = str(tmp_path / "nowhere")
    assert loop.main(PretrainEngine(), argv) == 2


def test_bad_numeric_flags_fail_before_the_model(data, tmp_path, no_model):
    for flag, value, message in (("--update-freq", "0", "--update-freq"), ("--batch-size", "0", "--batch-size")):
        with pytest.raises(loop.TrainingError, match=message):
            loop.run(PretrainEngine(), pretrain_args(data, tmp_path, flag, value))
