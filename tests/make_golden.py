"""Write the golden-forward files tests/data/golden/*.pt that tests/test_golden_forwards.py compares against.

    PYTHONPATH=. .venv/bin/python tests/make_golden.py            # all towers
    PYTHONPATH=. .venv/bin/python tests/make_golden.py vit text   # only some

Each file holds a seeded tiny-config tower (weights randomised away from their init values, so gates such as
TimeSformer's ``alpha_timeattn`` — zero at init — take part in the sum), an input and the tower's outputs in float32
and float64, made by the code as it is when the script runs.

Regenerating a file declares that the tower's maths changed ON PURPOSE: do it only together with the change, and give
the reason in the commit message. A golden test that fails after an unrelated edit is a bug in that edit.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "golden"
SEED = 0
TINY = {"embed_dim": 16, "depth": 2, "num_heads": 2, "img_size": 16, "patch_size": 8, "num_frames": 3,
        "project_embed_dim": 8, "text_width": 16, "text_layers": 2, "text_heads": 2, "vocab_size": 64,
        "context_length": 8}

# file stem -> (registry name, part: "visual" | "textual" | "classifier", extra overrides)
TOWERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "timesformer_div": ("CLIP_TimeSformerB16", "visual", {}),
    "timesformer_frozen": ("CLIP_FrozenInTime_TimeSformerB16", "visual", {}),
    "timemamba_div": ("CLIP_TimeMamba_like_timesformer", "visual", {}),
    "timemamba_frozen": ("CLIP_TimeMamba_like_frozen", "visual", {}),
    "vit": ("CLIP_VITT16", "visual", {"num_heads": 2}),
    "vivim": ("CLIP_ViViM_tiny", "visual", {"num_heads": None}),
    "text": ("CLIP_TimeSformerB16", "textual", {}),
    "cls_head": ("CLIP_TimeSformerB16", "classifier", {}),
}
NUM_CLASSES = 5


def build(stem: str) -> torch.nn.Module:
    """The tower of ``stem`` (randomly initialised), in eval mode."""
    from lavila.models import create_model

    name, part, extra = TOWERS[stem]
    overrides = {**TINY, **extra}
    if part == "classifier":
        return create_model(name, num_classes=NUM_CLASSES, **overrides).eval()
    return getattr(create_model(name, **overrides), part).eval()


def make_input(stem: str, generator: torch.Generator) -> torch.Tensor:
    if TOWERS[stem][1] == "textual":
        return torch.randint(1, TINY["vocab_size"], (2, TINY["context_length"]), generator=generator)
    return torch.randn(2, 3, TINY["num_frames"], TINY["img_size"], TINY["img_size"], generator=generator)


def forward(model: torch.nn.Module, inputs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    model = model.to(dtype)
    with torch.no_grad():
        return model(inputs if not inputs.is_floating_point() else inputs.to(dtype))


def make(stem: str) -> Path:
    generator = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    model = build(stem)
    with torch.no_grad():  # move every weight off its init value (zero gates, unit norms) so all of it is tested
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    inputs = make_input(stem, generator)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out32 = forward(model, inputs, torch.float32)
    out64 = forward(model, inputs, torch.float64)
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    path = GOLDEN_DIR / f"{stem}.pt"
    torch.save({"stem": stem, "state_dict": state, "input": inputs, "output_float32": out32,
                "output_float64": out64}, path)
    return path


def main(argv: list[str]) -> None:
    stems = argv or list(TOWERS)
    unknown = sorted(set(stems) - set(TOWERS))
    if unknown:
        raise SystemExit(f"unknown tower(s) {unknown}; choose from {list(TOWERS)}")
    for stem in stems:
        print(make(stem))


if __name__ == "__main__":
    main(sys.argv[1:])
