"""Building and running every model on CPU (and tokenising) imports no CUDA-only package, nor timm / open_clip."""
from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("flash_attn", "mamba_ssm", "causal_conv1d", "triton", "selective_scan_cuda", "causal_conv1d_cuda")
HEAVY = {"timm", "open_clip", "torchvision"}

SCRIPT = f"""
import sys
import torch
import lavila.models
from lavila.models import (checkpoint_spec, clip, convert, layers, registry, released, text, timesformer, vit,
                           vivim, create_model)
tiny = dict(embed_dim=32, depth=1, num_heads=2, img_size=32, num_frames=2, project_embed_dim=8, text_width=32,
            text_layers=1, text_heads=2, vocab_size=50, context_length=8)
for name in ["CLIP_TimeSformerB16", "CLIP_TimeMamba_like_frozen", "CLIP_VITT16", "CLIP_ViViM_tiny_hs4"]:
    model = create_model(name, **tiny)
    with torch.no_grad():
        model(torch.randn(1, 3, 2, 32, 32), torch.randint(0, 50, (1, 8)))
from lavila.data.tokenizer import tokenize
tokenize(["take plate", "wash cup"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
print("LOADED:", loaded)
print("HEAVY:", sorted({{m.split(".")[0] for m in sys.modules}} & {HEAVY!r}))
sys.exit(1 if loaded else 0)
"""


@pytest.fixture(scope="module")
def build_and_run_output() -> str:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_no_cuda_only_imports_when_importing_building_and_running(build_and_run_output):
    assert "LOADED: []" in build_and_run_output


def test_models_and_tokenizer_stay_light(build_and_run_output):
    """timm / open_clip / torchvision imports cost seconds per process (layers.py and tokenizer.py docstrings)."""
    assert "HEAVY: []" in build_and_run_output


def test_public_api():
    import lavila.models as models

    assert set(models.__all__) == {"CLIP", "VideoClassifier", "create_model", "get_model_config", "list_models"}
