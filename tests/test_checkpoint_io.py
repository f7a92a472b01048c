"""Safe checkpoint I/O: atomic save, weights-only load with an allow-list, unwrap/strip, strict report, pickles."""
from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lavila.utils import checkpoint as ck


def test_atomic_save_survives_exception_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def torn_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial bytes")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(ck.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    loaded = ck.load_checkpoint(path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # temp file removed


def test_atomic_save_survives_process_kill(tmp_path, repo_root):
    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint({"epoch": 1}, path)
    script = textwrap.dedent(f"""
        import os, torch
        from lavila.utils import checkpoint as ck
        def dying_save(obj, f, *a, **k):
            f.write(b"x" * 1000)
            f.flush()
            os._exit(9)  # the process dies mid-write, no cleanup runs
        ck.torch.save = dying_save
        ck.save_checkpoint({{"epoch": 2}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo_root, capture_output=True, timeout=120)
    assert proc.returncode == 9
    assert ck.load_checkpoint(path)["epoch"] == 1  # the old checkpoint is intact


def test_weights_only_load_accepts_namespace_and_numpy(tmp_path):
    path = tmp_path / "released.pt"
    args = argparse.Namespace(model="CLIP_TimeSformerB16", clip_length=4, betas=(0.9, 0.999), resume="")
    torch.save({"epoch": 5, "state_dict": {"module.visual.w": torch.ones(2)}, "best_acc1": 0.3, "args": args,
                "rng": np.random.get_state()}, path)
    loaded = ck.load_checkpoint(path)
    assert isinstance(loaded["args"], argparse.Namespace) and loaded["args"].clip_length == 4
    assert list(ck.unwrap_state_dict(loaded)) == ["visual.w"]


def test_weights_only_load_accepts_cls_actions_dataframe(tmp_path):
    pd = pytest.importorskip("pandas")
    actions = pd.DataFrame({"verb": [0, 2], "noun": [1, 3]}, index=["0:1", "2:3"])
    args = argparse.Namespace(actions=actions, mapping_act2v={0: 0, 1: 2}, mapping_act2n={0: 1, 1: 3})
    torch.save({"state_dict": {"module.fc_cls.weight": torch.zeros(2, 2)}, "args": args}, tmp_path / "cls.pt")
    loaded = ck.load_checkpoint(tmp_path / "cls.pt")
    assert loaded["args"].actions.equals(actions) and loaded["args"].mapping_act2v == {0: 0, 1: 2}


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_arbitrary_object_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _Payload(str(marker))}, path)
    with pytest.raises(ck.CheckpointError, match="trusted=True"):
        ck.load_checkpoint(path)
    assert not marker.exists()


class _Custom:
    def __init__(self):
        self.value = 3


def test_plain_custom_class_is_refused_unless_trusted(tmp_path):
    torch.save({"args": _Custom()}, tmp_path / "x.pt")
    with pytest.raises(ck.CheckpointError, match="_Custom.*allow-list"):
        ck.load_checkpoint(tmp_path / "x.pt")
    assert ck.load_checkpoint(tmp_path / "x.pt", trusted=True)["args"].value == 3


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ck.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises((ck.CheckpointError, pickle.UnpicklingError)):
        ck.load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model"])
def test_unwrap_state_dict_variants(wrap):
    sd = {"module.a.weight": torch.ones(1), "module.b": torch.zeros(1)}
    obj = sd if wrap == "bare" else {wrap: sd, "epoch": 3}
    assert list(ck.unwrap_state_dict(obj)) == ["a.weight", "b"]
    with pytest.raises(ck.CheckpointError, match="no model state dict"):
        ck.unwrap_state_dict({"epoch": 1})


def test_strict_load_reports_grouped_mismatches():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["0.weight"] = torch.zeros(5, 2)
    del sd["1.bias"]
    sd["extra.blocks.0.w"] = torch.zeros(1)
    sd["extra.blocks.1.w"] = torch.zeros(1)
    with pytest.raises(ck.CheckpointError) as info:
        ck.load_state_dict_strict(model, sd)
    msg = str(info.value)
    assert "missing keys (1)" in msg and "1.bias" in msg
    assert "unexpected keys (2)" in msg and "extra.blocks.* (2)" in msg
    assert "0.weight: checkpoint (5, 2) vs model (3, 2)" in msg
    good = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    ck.load_state_dict_strict(model, good)
    assert torch.all(model[0].weight == 0.5)


def test_safe_pickle_loads_annotations(tmp_path):
    data = [("vid1", 1.0, 2.5, "#C C opens a door"), ("vid2", 3.0, 4.0, ["a", "b"])]
    relevancy = np.random.rand(4, 3).astype(np.float32)
    for name, obj in (("meta.pkl", data), ("rel.pkl", relevancy), ("mix.pkl", {"x": {1, 2}, "y": np.int64(4)})):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(obj, f)
    assert ck.safe_pickle_load(tmp_path / "meta.pkl") == data
    np.testing.assert_array_equal(ck.safe_pickle_load(tmp_path / "rel.pkl"), relevancy)
    assert ck.safe_pickle_load(tmp_path / "mix.pkl")["y"] == 4


def test_safe_pickle_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump([1, _Payload(str(marker))], f)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        ck.safe_pickle_load(tmp_path / "evil.pkl")
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        ck.safe_pickle_load(tmp_path / "missing.pkl")
