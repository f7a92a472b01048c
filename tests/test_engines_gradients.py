"""Every trainable parameter of each engine's model gets a gradient from one train step.

DDP refuses a step in which a ``requires_grad`` parameter took no part in the loss ("parameters that were not used in
producing loss"), so an unused parameter is a multi-process crash even when one process trains fine. This is the
cheap, single-process guard; tests/test_engines_distributed.py runs the real 2-process jobs.
"""
from __future__ import annotations

import pytest
import torch
from engine_helpers import TINY_MODEL, paths, synthetic_root

from lavila.train.finetune_classification import ClassificationEngine
from lavila.train.finetune_retrieval import RetrievalEngine
from lavila.train.loop import build_loader, parse_engine_args
from lavila.train.pretrain import PretrainEngine
from lavila.utils import distributed as du


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_root(tmp_path_factory)


def unused_parameters(engine, argv: list[str]) -> list[str]:
    """Names of the ``requires_grad`` parameters that get no gradient from the engine's first train step."""
    args = parse_engine_args(engine, argv)
    info = du.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False)
    engine.prepare_args(args, info)
    train_set, _ = engine.build_datasets(args)
    torch.manual_seed(0)
    model = engine.build_model(args)
    model.train()
    criterion = engine.build_criterion(args)
    batch = next(iter(build_loader(train_set, args, info, training=True)))
    loss = engine.train_step(model, batch, criterion, args, torch.device("cpu"))["loss"]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return [n for (n, _), g in zip(named, grads) if g is None]


def _finetune(data, tmp_path, ckpt, train_key, val_key):
    p = paths(data)
    return ["--root", p["ek_root"], "--train-metadata", p[train_key], "--val-metadata", p[val_key],
            "--pretrain-model", str(ckpt), "--output-dir", str(tmp_path), *TINY_MODEL, "--batch-size", "4"]


def test_mir_finetune_uses_every_trainable_parameter(data, trainable_temperature, tmp_path):
    # the max-margin loss never uses the temperature: it must be frozen even when the checkpoint trained it
    assert unused_parameters(RetrievalEngine(), _finetune(data, tmp_path, trainable_temperature, "mir_train",
                                                          "mir_test")) == []


def test_cls_finetune_uses_every_trainable_parameter(data, trainable_temperature, tmp_path):
    assert unused_parameters(ClassificationEngine(), _finetune(data, tmp_path, trainable_temperature, "cls_train",
                                                               "cls_val")) == []


@pytest.mark.parametrize("temperature", ["--freeze-temperature", "--no-freeze-temperature"])
def test_pretrain_uses_every_trainable_parameter(data, tmp_path, temperature):
    p = paths(data)
    argv = ["--root", p["ego4d_root"], "--train-metadata", p["ego4d_meta"], "--output-dir", str(tmp_path),
            *TINY_MODEL, "--batch-size", "4", temperature]
    assert unused_parameters(PretrainEngine(), argv) == []
