"""Pretrain-I: CLIP (open_clip), DeiT (timm) and Vim weights into our towers, without downloads.

Equivalence argument: with the temporal gate tanh(alpha)=0 and a zero temporal embedding, a TimeSformer/TimeMamba
fed T identical frames computes exactly the per-frame image model (the temporal branch adds 0, every frame's
spatial attention sees the same tokens, the mean of T equal cls outputs is that output). So its visual feature must
equal the source model's per-image feature before projection. open_clip's ``ViT-B-16`` without a pretrained tag
uses exact GELU (QuickGELU only comes with the OpenAI weights' config), like our towers, so the only remaining
difference is LayerNorm eps (open_clip 1e-5 everywhere; ours 1e-6 in the blocks/final norm as the released
models): we check with that tolerance, and exactly after setting our eps to 1e-5.
"""
from __future__ import annotations

import pytest
import torch

from lavila.models import create_model
from lavila.models.convert import init_from_clip, init_from_deit, init_from_vim

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

T = 3


def _pre_projection(oc_visual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    proj = oc_visual.proj
    oc_visual.proj = None  # open_clip skips the projection when it is None
    try:
        return oc_visual(images)
    finally:
        oc_visual.proj = proj


def _set_layernorm_eps(module: torch.nn.Module, eps: float) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = eps


def _identical_frames(images: torch.Tensor, t: int = T) -> torch.Tensor:
    return images.unsqueeze(2).expand(-1, -1, t, -1, -1).contiguous()


@pytest.fixture(scope="module")
def tiny_open_clip():
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=16, vocab_size=100, width=32, heads=2, layers=1),
    ).eval()
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    return model


TINY_FOR_CLIP = dict(embed_dim=64, depth=2, num_heads=2, img_size=32, text_width=32, text_layers=1, text_heads=2,
                     vocab_size=100, context_length=16, project_embed_dim=16)


def test_open_clip_vit_b16_into_timesformer_b16_equals_per_frame_features():
    torch.manual_seed(0)
    oc = open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=32).eval()  # random weights, GELU
    model = create_model("CLIP_TimeSformerB16", num_classes=2, img_size=32, num_frames=T).eval()  # visual only
    report = init_from_clip(model, oc.state_dict())
    assert "visual.blocks.0.timeattn.Wqkv.weight" in report.left_at_init
    assert {"visual.proj", "logit_scale"} <= set(report.ignored_source_keys)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = _pre_projection(oc.visual, images)
        got = model.visual(_identical_frames(images))
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
        _set_layernorm_eps(model.visual, 1e-5)
        assert torch.allclose(model.visual(_identical_frames(images)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["CLIP_TimeSformerB16", "CLIP_FrozenInTime_TimeSformerB16",
                                  "CLIP_TimeMamba_like_timesformer", "CLIP_TimeMamba_like_frozen"])
def test_clip_init_divided_towers_start_as_the_image_model(tiny_open_clip, name):
    model = create_model(name, num_frames=T, **TINY_FOR_CLIP).eval()
    report = init_from_clip(model, tiny_open_clip.state_dict())
    left = set(report.left_at_init)
    assert {"logit_scale", "visual.image_projection", "textual.text_projection", "visual.blocks.0.alpha_timeattn",
            "visual.blocks.0.norm3.weight"} <= left
    assert not any(k.startswith("visual.blocks.0.attn.") or k.startswith("visual.blocks.0.mlp.") for k in left)
    assert all(b.alpha_timeattn.item() == 0.0 for b in model.visual.blocks)
    images = torch.randn(2, 3, 32, 32)
    _set_layernorm_eps(model.visual, 1e-5)
    with torch.no_grad():
        expected = _pre_projection(tiny_open_clip.visual, images)
        assert torch.allclose(model.visual.forward_features(_identical_frames(images)), expected, atol=1e-5)


def test_clip_init_text_tower_matches_open_clip(tiny_open_clip):
    model = create_model("CLIP_TimeSformerB16", num_frames=T, **{**TINY_FOR_CLIP, "vocab_size": 120}).eval()
    init_from_clip(model, tiny_open_clip.state_dict())
    emb = model.textual.token_embedding.weight
    assert torch.equal(emb[:100], tiny_open_clip.token_embedding.weight) and not emb[100:].any()  # zero-padded
    with torch.no_grad():
        model.textual.text_projection.copy_(tiny_open_clip.text_projection)  # never loaded by the init (reference)
        tokens = torch.randint(1, 90, (3, 16))
        tokens[:, 7] = 99  # EOT: largest id
        expected = tiny_open_clip.encode_text(tokens)
        assert torch.allclose(model.textual(tokens), expected, atol=1e-5)


def test_clip_init_into_image_vit(tiny_open_clip):
    model = create_model("CLIP_VITB16", num_frames=1, **TINY_FOR_CLIP).eval()
    assert model.visual.conv1.weight.ndim == 2  # Linear patch embedding: the CLIP Conv2d weight is flattened
    init_from_clip(model, tiny_open_clip.state_dict())
    _set_layernorm_eps(model.visual, 1e-5)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.visual.forward_features(images),
                              _pre_projection(tiny_open_clip.visual, images), atol=1e-5)


def test_clip_init_refuses_vivim_visual_and_wrong_width(tiny_open_clip):
    vivim = create_model("CLIP_ViViM_tiny", num_frames=2, **{**TINY_FOR_CLIP, "embed_dim": 32})
    report = init_from_clip(vivim, tiny_open_clip.state_dict())  # text only, as the reference
    assert all(k.startswith("textual.") for k in report.loaded)
    with pytest.raises(ValueError, match="init_from_vim"):
        init_from_clip(vivim, tiny_open_clip.state_dict(), visual=True)
    narrow = create_model("CLIP_TimeSformerB16", num_frames=2, **{**TINY_FOR_CLIP, "embed_dim": 32})
    with pytest.raises(ValueError, match="shape mismatch"):
        init_from_clip(narrow, tiny_open_clip.state_dict())


@pytest.fixture(scope="module")
def deit_tiny():
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    with torch.no_grad():
        model.patch_embed.proj.bias.normal_()  # random, non-zero: checks the bias is folded, not lost
    return model


def _deit_features_with_our_ln_pre(deit, ln_pre, images):
    """DeiT's forward with our (freshly initialised, as the reference) ln_pre inserted after the embeddings."""
    x = deit._pos_embed(deit.patch_embed(images))
    x = deit.norm(deit.blocks(ln_pre(x)))
    return x[:, 0]


def test_deit_tiny_into_vit_t_equals_image_features(deit_tiny):
    model = create_model("CLIP_VITT16", num_frames=1, img_size=32, num_classes=1).eval()  # visual only: fast
    report = init_from_deit(model, deit_tiny.state_dict())
    assert {"visual.ln_pre.weight", "visual.ln_pre.bias", "fc_cls.weight"} == set(report.left_at_init) - {"fc_cls.bias"}
    assert "head.weight" in report.ignored_source_keys
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = _deit_features_with_our_ln_pre(deit_tiny, model.visual.ln_pre, images)
        assert torch.allclose(model.visual.forward_features(images), expected, atol=1e-5)


def test_deit_into_video_vit_and_timesformer(deit_tiny):
    vit = create_model("CLIP_VITT16", num_frames=4, img_size=32, num_classes=1)
    init_from_deit(vit, {"model": deit_tiny.state_dict()})  # the DeiT release files wrap weights in 'model'
    assert not vit.visual.temporal_embedding.any()
    tsf = create_model("CLIP_TimeSformerB16", embed_dim=192, num_heads=3, img_size=32, num_frames=T,
                       num_classes=2).eval()
    init_from_deit(tsf, deit_tiny.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = _deit_features_with_our_ln_pre(deit_tiny, tsf.visual.ln_pre, images)
        assert torch.allclose(tsf.visual(_identical_frames(images)), expected, atol=1e-5)


def test_deit_patch_bias_drop_mode_matches_reference(deit_tiny):
    model = create_model("CLIP_VITT16", num_frames=1, img_size=32, num_classes=1)
    report = init_from_deit(model, deit_tiny.state_dict(), patch_bias="drop")
    assert "patch_embed.proj.bias" in report.ignored_source_keys
    assert torch.equal(model.visual.positional_embedding, deit_tiny.pos_embed[0])


def _vim_like_state_dict(d_state: int) -> dict[str, torch.Tensor]:
    """A Vim 'midclstok' ImageNet state dict: ViViM's visual keys minus the video parts, plus the classifier head."""
    torch.manual_seed(0)
    src = create_model("CLIP_ViViM_tiny", num_classes=1, embed_dim=32, depth=2, img_size=32, num_frames=1)
    sd = {k[len("visual."):]: v.clone() for k, v in src.state_dict().items() if k.startswith("visual.")}
    del sd["temporal_embedding"]
    with torch.no_grad():
        for v in sd.values():
            v.normal_()
    return {**sd, "head.weight": torch.randn(10, 32), "head.bias": torch.randn(10)}


def test_vim_into_vivim_and_d_state_resampling(tiny_open_clip):
    vim = _vim_like_state_dict(16)
    model = create_model("CLIP_ViViM_tiny", num_frames=4, embed_dim=32, depth=2, **{
        k: v for k, v in TINY_FOR_CLIP.items() if k not in ("embed_dim", "depth", "num_heads")})
    report = init_from_vim(model, {"model": vim}, clip_state_dict=tiny_open_clip.state_dict())
    assert set(report.left_at_init) == {"logit_scale", "visual.temporal_embedding", "visual.image_projection",
                                        "textual.text_projection"}
    assert torch.equal(model.visual.layers[1].mixer.A_b_log, vim["layers.1.mixer.A_b_log"])

    hs4 = create_model("CLIP_ViViM_tiny_hs4", num_frames=4, embed_dim=32, depth=2, img_size=32, num_classes=1)
    init_from_vim(hs4, vim)
    keep = [0, 4, 8, 12]  # nearest 16 -> 4
    mixer = hs4.visual.layers[0].mixer
    assert torch.equal(mixer.A_log, vim["layers.0.mixer.A_log"][:, keep])
    src_x = vim["layers.0.mixer.x_proj_b.weight"]
    rank = mixer.dt_proj.weight.shape[1]
    expected = torch.cat([src_x[:rank], src_x[rank:rank + 16][keep], src_x[rank + 16:][keep]])
    assert torch.equal(mixer.x_proj_b.weight, expected)
    with torch.no_grad():
        assert torch.isfinite(hs4(torch.randn(1, 3, 4, 32, 32))).all()


def test_vim_wrong_size_is_a_clear_error():
    vim = _vim_like_state_dict(16)
    deeper = create_model("CLIP_ViViM_tiny", num_frames=2, embed_dim=32, depth=1, img_size=32, num_classes=1)
    with pytest.raises(KeyError, match="depth"):
        init_from_vim(deeper, vim)


def test_deit_with_clip_of_same_width_takes_clip_ln_pre_and_text(tiny_open_clip):
    """As the reference's DeiT-B + CLIP ViT-B/16 path: CLIP's ln_pre survives when widths match; text from CLIP."""
    torch.manual_seed(0)
    deit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=2,
                                                            num_heads=2, num_classes=10)
    model = create_model("CLIP_VITB16", num_frames=2, **TINY_FOR_CLIP)
    report = init_from_deit(model, deit.state_dict(), clip_state_dict=tiny_open_clip.state_dict())
    assert torch.equal(model.visual.ln_pre.weight, tiny_open_clip.visual.ln_pre.weight)
    assert torch.equal(model.visual.ln_post.weight, deit.norm.weight)
    assert torch.equal(model.textual.ln_final.bias, tiny_open_clip.ln_final.bias)
    assert set(report.left_at_init) == {"logit_scale", "visual.temporal_embedding", "visual.image_projection",
                                        "textual.text_projection"}
