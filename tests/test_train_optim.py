"""Parameter groups: no weight decay on biases, norms, embeddings, cls tokens, temporal embeddings, Mamba A_log/D."""
from __future__ import annotations

import argparse

import pytest
import torch

from lavila.models import create_model
from lavila.train.optim import build_optimizer, param_groups

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2,
        "project_embed_dim": 16, "img_size": 32, "num_frames": 2}


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("name", ["CLIP_TimeSformerB16", "CLIP_TimeMamba_like_timesformer", "CLIP_VITT16"])
def test_no_decay_parameters(name):
    model = create_model(name, **TINY)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    decayed, skipped = _names(model, decay), _names(model, no_decay)
    assert "logit_scale" not in decayed | skipped  # frozen temperature is not optimised
    for n in decayed:
        leaf = n.split(".")[-1]
        assert leaf not in ("bias", "A_log", "A_b_log", "D", "D_b"), n
        assert not any(k in n for k in ("cls_token", "class_embedding", "temporal_embed", "pos_embed",
                                        "positional_embedding", "token_embedding", "ln_", "norm")), n
    assert "textual.token_embedding.weight" in skipped and "textual.positional_embedding" in skipped
    # every weight matrix of a linear / conv layer, the attention in-projections and both projections are decayed
    matrices = {f"{prefix}.weight" for prefix, m in model.named_modules()
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))}
    matrices |= {n for n, _ in model.named_parameters() if n.endswith("in_proj_weight")}
    matrices |= {"visual.image_projection", "textual.text_projection"}
    assert {"visual.image_projection", "textual.transformer.resblocks.0.attn.in_proj_weight"} <= matrices
    assert matrices <= decayed, sorted(matrices - decayed)
    if "TimeMamba" in name:
        assert any(n.endswith("A_log") for n in skipped) and any(n.endswith(".D") for n in skipped)
    if "TimeSformer" in name or "TimeMamba" in name:
        assert "visual.cls_token" in skipped


def test_adamw_and_sgd():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    args = argparse.Namespace(wd=0.1, lr=0.01, betas=(0.8, 0.99), eps=1e-6, optimizer="adamw")
    opt = build_optimizer(model, args)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.99)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]  # only the Linear weight is decayed
    args.optimizer = "sgd"
    opt = build_optimizer(model, args)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.8


@pytest.mark.parametrize("name", ["CLIP_TimeSformerB16", "CLIP_TimeMamba_like_timesformer", "CLIP_ViViM_tiny"])
def test_reference_wd_rule_decays_cls_token_temporal_embeddings_and_a_log(name):
    """--wd-rule reference: ndim >= 2 and no bias/ln/bn/pos_embed/positional_embedding in the name."""
    model = create_model(name, **TINY)
    decay, no_decay = param_groups(model, 0.05, rule="reference")
    decayed, skipped = _names(model, decay), _names(model, no_decay)
    params = dict(model.named_parameters())
    for n in decayed:
        assert params[n].ndim >= 2 and not any(s in n for s in ("bias", "ln", "bn", "pos_embed",
                                                                "positional_embedding")), n
    for n in skipped:
        assert params[n].ndim < 2 or any(s in n for s in ("bias", "ln", "bn", "pos_embed", "positional_embedding")), n
    assert {"visual.cls_token", "textual.token_embedding.weight", "textual.text_projection"} <= decayed
    assert {"visual.pos_embed", "textual.positional_embedding"} <= skipped
    if name == "CLIP_TimeSformerB16":
        assert "visual.temporal_embed" in decayed
    if name == "CLIP_ViViM_tiny":
        assert "visual.temporal_embedding" in decayed and "visual.layers.0.mixer.A_log" in decayed
    if name == "CLIP_TimeMamba_like_timesformer":
        assert {"visual.blocks.0.time_mamba.A_log", "visual.blocks.0.time_mamba.A_b_log"} <= decayed
        assert "visual.blocks.0.time_mamba.D" in skipped  # ndim 1
    default_decayed = _names(model, param_groups(model, 0.05)[0])
    assert "visual.cls_token" not in default_decayed  # our default keeps exempting it
    args = argparse.Namespace(wd=0.05, lr=0.01, betas=(0.9, 0.999), eps=1e-8, optimizer="adamw", wd_rule="reference")
    opt = build_optimizer(model, args)
    assert [len(g["params"]) for g in opt.param_groups] == [len(decayed), len(skipped)]
    with pytest.raises(ValueError, match="--wd-rule"):
        param_groups(model, 0.05, rule="timm")


def test_drop_path_scope_reference_turns_it_off_in_timesformer_and_timemamba_only():
    from lavila.models.registry import effective_drop_path_rate
    from lavila.train.engine_utils import overrides_for
    from lavila.train.loop import parse_engine_args
    from lavila.train.pretrain import PretrainEngine

    for name, tower_keeps in (("CLIP_TimeSformerB16", False), ("CLIP_TimeMamba_like_frozen", False),
                              ("CLIP_VITT16", True), ("CLIP_ViViM_small", True)):
        assert effective_drop_path_rate(name, 0.1, "all") == 0.1
        assert effective_drop_path_rate(name, 0.1, "reference") == (0.1 if tower_keeps else 0.0)
    tiny = [f"{k}={v}" for k, v in {**TINY, "depth": 2}.items()]
    for scope, rate in (("all", 0.2), ("reference", 0.0)):
        args = parse_engine_args(PretrainEngine(), ["--model", "CLIP_TimeSformerB16", "--drop-path-rate", "0.2",
                                                    "--drop-path-scope", scope, "--model-overrides", *tiny])
        name, overrides = overrides_for(args, None)
        assert overrides["drop_path_rate"] == rate
        model = create_model(name, **overrides)
        assert model.visual.blocks[-1].drop_path.p == rate  # last block: the full rate of the linear schedule
