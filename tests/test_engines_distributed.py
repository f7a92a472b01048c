"""MIR and CLS fine-tuning in 2 processes (gloo, CPU) give the run of one process holding the whole batch.

The MIR job starts from a checkpoint pretrained with a trainable temperature: its ``logit_scale`` must not be a
trainable parameter of the fine-tuned model, or DDP stops at step 2 ("parameters that were not used in producing
loss"). Processes are forked (as tests/test_distributed.py) to spare two fresh interpreters.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import TINY_MODEL, dist_env_restored, paths, synthetic_root

from lavila.train.finetune_classification import ClassificationEngine
from lavila.train.finetune_retrieval import RetrievalEngine
from lavila.train.loop import CHECKPOINT, run
from lavila.utils.checkpoint import load_checkpoint
from lavila.utils.logging import read_metrics

ENGINES = {"mir": RetrievalEngine, "cls": ClassificationEngine}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_root(tmp_path_factory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, engine: str, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from lavila.utils import distributed as du

    try:
        assert run(ENGINES[engine](), argv)["status"] == "finished"
    finally:
        du.cleanup_distributed()


def _two_processes(engine: str, argv: list[str]) -> None:
    with dist_env_restored():
        mp.start_processes(_worker, args=(2, _free_port(), engine, argv), nprocs=2, join=True, start_method="fork")


def _argv(data, out, ckpt, train_key, val_key, batch, *extra):
    p = paths(data)
    return ["--root", p["ek_root"], "--train-metadata", p[train_key], "--val-metadata", p[val_key],
            "--pretrain-model", str(ckpt), "--output-dir", str(out), *TINY_MODEL, "--batch-size", str(batch),
            "--epochs", "1", "--fix-lr", "--lr", "0.1", "--optimizer", "sgd", "--eval-freq", "100", *extra]


def _same_run(one, two) -> tuple[list[dict], list[dict]]:
    """Same number of steps and the same weights (SGD: Adam would turn rounding noise in the gradient of a
    parameter the loss is invariant to, such as an attention key bias, into a full lr-sized step)."""
    steps_one, steps_two = read_metrics(one, "step"), read_metrics(two, "step")
    assert len(steps_two) == len(steps_one) >= 2  # DDP's unused-parameter error comes at step 2
    a, b = load_checkpoint(one / CHECKPOINT)["state_dict"], load_checkpoint(two / CHECKPOINT)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    return steps_one, steps_two


def test_two_process_mir_finetune_from_trainable_temperature_matches_one_process(data, trainable_temperature,
                                                                                 tmp_path):
    run(RetrievalEngine(), _argv(data, tmp_path / "one", trainable_temperature, "mir_train", "mir_test", 4))
    _two_processes("mir", _argv(data, tmp_path / "two", trainable_temperature, "mir_train", "mir_test", 2))
    one, two = _same_run(tmp_path / "one", tmp_path / "two")
    # the max-margin loss is computed over the gathered global batch: every rank logs the global loss
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-5)


@pytest.mark.slow  # ~5-10 s; the default suite's guard is tests/test_engines_gradients.py
def test_two_process_cls_finetune_matches_one_process(data, trainable_temperature, tmp_path):
    # no mixup / dropout / drop path: the per-rank random streams differ, the weights must not
    extra = ("--mixup", "0", "--cutmix", "0", "--dropout-rate", "0", "--drop-path-rate", "0")
    run(ClassificationEngine(), _argv(data, tmp_path / "one", trainable_temperature, "cls_train", "cls_val", 4,
                                      *extra))
    _two_processes("cls", _argv(data, tmp_path / "two", trainable_temperature, "cls_train", "cls_val", 2, *extra))
    _same_run(tmp_path / "one", tmp_path / "two")
