"""Golden forwards: every tower's output on stored seeded weights and inputs equals the stored output.

Parameter names and shapes do not pin the maths (a residual taking the wrong tensor keeps every key); these files do.
The files in tests/data/golden/ were made by tests/make_golden.py from the code that was verified equal to the
reference forward. To regenerate (ONLY when a tower's maths changes on purpose; say why in the commit message):

    PYTHONPATH=. .venv/bin/python tests/make_golden.py [tower ...]
"""
from __future__ import annotations

import pytest
import torch
from make_golden import GOLDEN_DIR, TOWERS, build, forward

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.fixture(scope="module", params=sorted(TOWERS))
def golden(request) -> dict:
    path = GOLDEN_DIR / f"{request.param}.pt"
    assert path.is_file(), f"{path} missing: run tests/make_golden.py {request.param}"
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_tower_forward_matches_golden(golden, dtype):
    torch.manual_seed(0)
    model = build(golden["stem"])
    model.load_state_dict(golden["state_dict"], strict=True)
    expected = golden[f"output_{str(dtype).split('.')[-1]}"]
    got = forward(model, golden["input"], dtype)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    err = (got - expected).abs().max().item()
    assert err <= TOLERANCE[dtype], f"{golden['stem']} {dtype}: max |diff| {err:.3g} > {TOLERANCE[dtype]:g}"


def test_golden_weights_are_not_at_their_init_values():
    """The stored gates are non-zero, so a branch scaled by tanh(alpha) contributes to the golden output."""
    for stem in ("timesformer_div", "timemamba_div", "timesformer_frozen", "timemamba_frozen"):
        sd = torch.load(GOLDEN_DIR / f"{stem}.pt", weights_only=True)["state_dict"]
        gates = [v for k, v in sd.items() if k.endswith("alpha_timeattn")]
        assert gates and all(g.abs().min() > 1e-3 for g in gates), stem
