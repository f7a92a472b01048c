"""Tiny configs of every tower: forward/backward on CPU in fp32, and the behaviour each part promises."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lavila.models import create_model, list_models
from lavila.models.layers import Attention, DropPath, RMSNorm

T = 3
TINY = dict(embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=16, num_frames=T, project_embed_dim=16,
            text_width=32, text_layers=1, text_heads=2, vocab_size=100, context_length=16)
TOWERS = ["CLIP_TimeSformerB16", "CLIP_FrozenInTime_TimeSformerB16", "CLIP_TimeMamba_like_timesformer",
          "CLIP_TimeMamba_like_frozen", "CLIP_VITT16", "CLIP_ViViM_tiny", "CLIP_ViViM_tiny_hs4"]
GATED = TOWERS[:4]


def _tiny(name: str, **kw):
    torch.manual_seed(0)
    return create_model(name, **{**TINY, **kw})


def _video(b: int = 2, t: int = T) -> torch.Tensor:
    return torch.randn(b, 3, t, 32, 32, generator=torch.Generator().manual_seed(1))


def _tokens(b: int = 2) -> torch.Tensor:
    tok = torch.randint(1, 90, (b, 16), generator=torch.Generator().manual_seed(2))
    tok[:, 5] = 99  # EOT = the largest id
    tok[:, 6:] = 0
    return tok


def _set_gates(model, value: float) -> None:
    with torch.no_grad():
        for block in model.visual.blocks:
            block.alpha_timeattn.fill_(value)


@pytest.mark.parametrize("name", TOWERS)
def test_forward_backward_finite(name):
    model = _tiny(name)
    if name in GATED:
        _set_gates(model, 0.5)  # so the temporal mixers receive gradients too
    out = model(_video(), _tokens())
    assert out["image_embed"].shape == (2, 16) and out["text_embed"].shape == (2, 16)
    assert torch.allclose(out["image_embed"].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out["logit_scale"], torch.tensor(1 / 0.07))
    loss = (out["image_embed"] @ out["text_embed"].T * out["logit_scale"]).logsumexp(-1).sum()
    loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: no gradient for {n}"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {n}"
    assert not model.logit_scale.requires_grad


@pytest.mark.parametrize("name", GATED)
def test_temporal_gate_and_frame_order(name):
    model = _tiny(name).eval()
    video = _video()
    reversed_video = video.flip(2)
    with torch.no_grad():
        if hasattr(model.visual, "temporal_embed"):
            model.visual.temporal_embed.normal_()
        base = model.visual(video)
        # gate 0: the towers start as image models; only the (order-free) frame mean of cls outputs sees time.
        if not hasattr(model.visual, "temporal_embed"):
            assert torch.allclose(base, model.visual(reversed_video), atol=1e-5)
        _set_gates(model, 0.7)
        gated = model.visual(video)
        assert not torch.allclose(base, gated, atol=1e-4), "the temporal branch does not change the output"
        assert not torch.allclose(gated, model.visual(reversed_video), atol=1e-4), "frame order is ignored"


def test_timesformer_with_zero_gate_and_zero_temporal_embed_ignores_frame_order():
    model = _tiny("CLIP_TimeSformerB16").eval()
    video = _video()
    with torch.no_grad():
        assert torch.allclose(model.visual(video), model.visual(video.flip(2)), atol=1e-5)


@pytest.mark.parametrize("name", ["CLIP_VITT16", "CLIP_ViViM_tiny"])
def test_joint_towers_model_time(name):
    model = _tiny(name).eval()
    video = _video()
    with torch.no_grad():
        model.visual.temporal_embedding.normal_()
        assert not torch.allclose(model.visual(video), model.visual(video.flip(2)), atol=1e-4)


def test_timesformer_accepts_other_frame_counts_like_the_reference():
    model = _tiny("CLIP_TimeSformerB16").eval()
    with torch.no_grad():
        assert model.visual(_video(t=5)).shape == (2, 16)


@pytest.mark.parametrize("name", ["CLIP_VITT16", "CLIP_ViViM_tiny"])
def test_wrong_frame_count_is_a_clear_error(name):
    with pytest.raises(ValueError, match="num_frames"):
        _tiny(name)(_video(t=T + 1), _tokens())


@pytest.mark.parametrize("name", ["CLIP_TimeMamba_like_timesformer", "CLIP_VITT16", "CLIP_ViViM_tiny"])
def test_classifier(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **{k: v for k, v in TINY.items() if not k.startswith(("text", "voc",
                                                                                                    "context"))})
    logits = model(_video())
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert model.fc_cls.weight.grad is not None
    assert "visual.image_projection" not in model.state_dict()


@pytest.mark.parametrize("name", ["CLIP_FrozenInTime_TimeSformerB16", "CLIP_ViViM_tiny"])
def test_grad_checkpointing_gives_same_result(name):
    plain = _tiny(name, drop_path_rate=0.0)
    if name in GATED:
        _set_gates(plain, 0.3)
    ckpt = _tiny(name, drop_path_rate=0.0)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_grad_checkpointing(True)
    video, tokens = _video(), _tokens()
    out_a, out_b = plain(video, tokens), ckpt(video, tokens)
    assert torch.allclose(out_a["image_embed"], out_b["image_embed"], atol=1e-6)
    (out_a["image_embed"].sum() + out_a["text_embed"].sum()).backward()
    (out_b["image_embed"].sum() + out_b["text_embed"].sum()).backward()
    pa = dict(plain.named_parameters())
    for n, p in ckpt.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, pa[n].grad, atol=1e-5), n


def test_drop_path_rate_is_honoured_and_off_in_eval():
    model = _tiny("CLIP_TimeSformerB16", drop_path_rate=0.5)
    assert model.visual.blocks[-1].drop_path.p == pytest.approx(0.5)
    assert model.visual.blocks[0].drop_path.p == 0.0
    model.eval()
    video = _video()
    with torch.no_grad():
        assert torch.allclose(model.visual(video), model.visual(video))


def test_text_tower_pools_at_eot_and_is_causal():
    model = _tiny("CLIP_VITT16").eval()
    tokens = _tokens()
    changed = tokens.clone()
    changed[:, 7:] = 42  # after EOT: invisible to the EOT position under the causal mask
    with torch.no_grad():
        assert torch.allclose(model.textual(tokens), model.textual(changed), atol=1e-6)
        changed[:, 2] = 43  # before EOT: must matter
        assert not torch.allclose(model.textual(tokens), model.textual(changed), atol=1e-5)


def test_wqkv_layout_matches_multihead_attention():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.Wqkv.weight)
        mha.in_proj_bias.copy_(attn.Wqkv.bias)
        mha.out_proj.weight.copy_(attn.out_proj.weight)
        mha.out_proj.bias.copy_(attn.out_proj.bias)
        x = torch.randn(2, 5, 16)
        assert torch.allclose(attn(x), mha(x, x, x, need_weights=False)[0], atol=1e-6)


def test_rms_norm_fused_add_semantics():
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8).to(torch.bfloat16)
    residual = torch.randn(2, 3, 8)
    y, new_residual = norm(x, residual, prenorm=True, residual_in_fp32=True)
    assert y.dtype == torch.bfloat16 and new_residual.dtype == torch.float32
    expected_res = x.float() + residual
    assert torch.equal(new_residual, expected_res)
    expected = expected_res * torch.rsqrt(expected_res.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(y.float(), expected, atol=1e-2)
    assert torch.allclose(norm(expected_res), F.rms_norm(expected_res, (8,), norm.weight, 1e-5), atol=1e-6)


def test_drop_path_scales_kept_samples():
    torch.manual_seed(0)
    layer = DropPath(0.5).train()
    out = layer(torch.ones(1000, 4))
    kept = out[:, 0] != 0
    assert torch.all(out[kept] == 2.0) and 300 < kept.sum() < 700
    assert torch.equal(layer.eval()(torch.ones(3, 4)), torch.ones(3, 4))


def test_vivim_keeps_fp32_residual_under_autocast():
    """The residual stream between layers stays float32 under bf16 autocast (checked on every layer's output: an
    output tolerance cannot tell a bf16 residual from an fp32 one on a tiny model)."""
    model = _tiny("CLIP_ViViM_tiny").eval()
    residual_dtypes = []
    hooks = [layer.register_forward_hook(lambda mod, inp, out: residual_dtypes.append(out[1].dtype))
             for layer in model.visual.layers]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.visual(_video())
    for hook in hooks:
        hook.remove()
    assert len(residual_dtypes) == len(model.visual.layers) > 0
    assert set(residual_dtypes) == {torch.float32}, residual_dtypes
    assert torch.isfinite(out.float()).all()
    with torch.no_grad():
        ref = model.visual(_video())
    assert torch.allclose(out.float(), ref, atol=0.1, rtol=0.1)  # bf16 mixers: close, not equal


def test_every_registry_model_builds_tiny():
    for name in list_models():
        assert _tiny(name).num_frames == T


@pytest.mark.gpu
@pytest.mark.parametrize("name", TOWERS)
def test_cuda_matches_cpu_and_bf16_autocast_is_finite(name):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = _tiny(name).eval()
    if name in GATED:
        _set_gates(model, 0.5)
    video, tokens = _video(), _tokens()
    residual_dtypes = []
    layers = getattr(model.visual, "layers", [])  # ViViM: (hidden, residual) per layer, the residual kept fp32
    with torch.no_grad():
        cpu = model(video, tokens)["image_embed"]
        model.cuda()
        gpu = model(video.cuda(), tokens.cuda())["image_embed"].cpu()
        hooks = [layer.register_forward_hook(lambda m, i, o: residual_dtypes.append(o[1].dtype)) for layer in layers]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(video.cuda(), tokens.cuda())["image_embed"].float().cpu()
        for hook in hooks:
            hook.remove()
    assert torch.allclose(cpu, gpu, atol=1e-3)
    # a tolerance on unit vectors cannot tell a bf16 residual from an fp32 one: the dtype is checked directly
    assert set(residual_dtypes) <= {torch.float32} and len(residual_dtypes) == len(layers)
    assert torch.isfinite(bf16).all() and torch.allclose(cpu, bf16, atol=0.1)
