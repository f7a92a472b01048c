"""Pretrained initialisation ("Pretrain-I"): the key maps of external weights into this project's models.

OpenAI / open_clip CLIP ViT-B/16 (visual -> TimeSformer / TimeMamba / ViT, text -> text tower), DeiT-T/S/B (timm or
the DeiT files) -> ViT or TimeSformer visual, Vim-T/S -> ViViM (with nearest d_state resampling, e.g. 16 -> 4). Parts
that the source does not have (temporal attention / Mamba, ``alpha_timeattn`` = 0, ``norm3``, temporal embeddings =
0, projections, ``logit_scale``) keep their initialisation, as in the reference; the CLIP
``visual.proj``/``text_projection``/``logit_scale`` are never loaded. Released (and this project's) checkpoints are
:mod:`lavila.models.released`'s job.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lavila.models.released import LoadReport, abbrev
from lavila.utils.checkpoint import unwrap_state_dict


def _copy_into(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> LoadReport:
    """Copy ``tensors`` (model key -> tensor) into ``model`` with shape checks; everything else stays at init."""
    own = model.state_dict()
    unknown = [k for k in tensors if k not in own]
    if unknown:
        raise KeyError(f"{source}: target keys not in the model: {abbrev(unknown)}")
    bad = [f"{k}: source {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in tensors.items()
           if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{source}: shape mismatch (wrong source model size for this tower?): " + "; ".join(bad[:5]))
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(own[k].dtype))
    return LoadReport(loaded=list(tensors), left_at_init=[k for k in own if k not in tensors])


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained initialisation: CLIP
# ---------------------------------------------------------------------------------------------------------------------
_CLIP_IGNORED = ("logit_scale", "visual.proj", "text_projection", "input_resolution", "context_length", "vocab_size",
                 "attn_mask")


def _towers(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    if not hasattr(model, "visual"):
        raise TypeError(f"expected a CLIP or VideoClassifier model, got {type(model).__name__}")
    return model.visual, getattr(model, "textual", None)


def _tower_kind(visual: nn.Module) -> str:
    from lavila.models.timesformer import SpaceTimeTransformer
    from lavila.models.vit import VisionTransformer
    from lavila.models.vivim import ViViM

    for cls, kind in ((SpaceTimeTransformer, "timesformer"), (VisionTransformer, "vit"), (ViViM, "vivim")):
        if isinstance(visual, cls):
            return kind
    raise TypeError(f"unknown visual tower {type(visual).__name__}")


def _clip_block_names(kind: str, i: int) -> tuple[str, dict[str, str]]:
    if kind == "timesformer":
        return f"visual.blocks.{i}.", {"ln_1": "norm1", "ln_2": "norm2", "attn.in_proj_weight": "attn.Wqkv.weight",
                                       "attn.in_proj_bias": "attn.Wqkv.bias", "attn.out_proj": "attn.out_proj",
                                       "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    return f"visual.transformer.resblocks.{i}.", {"ln_1": "ln_1", "ln_2": "ln_2",
                                                  "attn.in_proj_weight": "attn.Wqkv.weight",
                                                  "attn.in_proj_bias": "attn.Wqkv.bias",
                                                  "attn.out_proj": "attn.out_proj", "mlp.c_fc": "mlp.fc1",
                                                  "mlp.c_proj": "mlp.fc2"}


def _rename(suffix: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if suffix == old or suffix.startswith(old + "."):
            return new + suffix[len(old):]
    return None


def map_clip_visual(clip_sd: Mapping[str, torch.Tensor], kind: str, visual: nn.Module) -> dict[str, torch.Tensor]:
    """CLIP ``visual.*`` (OpenAI names) -> this project's visual keys for a TimeSformer/TimeMamba or ViT tower."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in clip_sd.items():
        if not key.startswith("visual.") or key in _CLIP_IGNORED:
            continue
        name = key[len("visual."):]
        if name.startswith("transformer.resblocks."):
            idx, suffix = name[len("transformer.resblocks."):].split(".", 1)
            prefix, table = _clip_block_names(kind, int(idx))
            new = _rename(suffix, table)
            if new is None:
                unknown.append(key)
                continue
            out[prefix + new] = value
        elif kind == "timesformer":
            simple = {"class_embedding": ("visual.cls_token", lambda v: v.reshape(1, 1, -1)),
                      "positional_embedding": ("visual.pos_embed", lambda v: v.unsqueeze(0)),
                      "conv1.weight": ("visual.patch_embed.proj.weight", lambda v: v),
                      "ln_pre.weight": ("visual.ln_pre.weight", lambda v: v),
                      "ln_pre.bias": ("visual.ln_pre.bias", lambda v: v),
                      "ln_post.weight": ("visual.norm.weight", lambda v: v),
                      "ln_post.bias": ("visual.norm.bias", lambda v: v)}
            if name not in simple:
                unknown.append(key)
                continue
            target, fn = simple[name]
            out[target] = fn(value)
        else:
            if name not in ("class_embedding", "positional_embedding", "conv1.weight", "ln_pre.weight",
                            "ln_pre.bias", "ln_post.weight", "ln_post.bias"):
                unknown.append(key)
                continue
            if name == "conv1.weight":
                value = value.reshape(visual.conv1.weight.shape)  # Conv2d [W,3,p,p] <-> Linear [W,3*p*p]
            out["visual." + name] = value
    if unknown:
        raise KeyError(f"CLIP state dict has visual keys this converter does not know: {abbrev(unknown)} "
                       "(expected an OpenAI/open_clip ViT CLIP)")
    return out


def map_clip_text(clip_sd: Mapping[str, torch.Tensor], textual: nn.Module) -> dict[str, torch.Tensor]:
    """CLIP text keys -> ``textual.*`` (positional embedding cut/zero-padded to the context length, token embedding
    zero-padded to the vocabulary size)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in clip_sd.items():
        if key.startswith("visual.") or key in _CLIP_IGNORED:
            continue
        if key == "positional_embedding":
            ctx = textual.context_length
            value = value[:ctx] if value.shape[0] >= ctx else F.pad(value, (0, 0, 0, ctx - value.shape[0]))
            out["textual.positional_embedding"] = value
        elif key == "token_embedding.weight":
            vocab = textual.vocab_size
            if value.shape[0] > vocab:
                raise ValueError(f"CLIP vocabulary ({value.shape[0]}) is larger than the model's vocab_size ({vocab})")
            out["textual.token_embedding.weight"] = F.pad(value, (0, 0, 0, vocab - value.shape[0]))
        elif key.startswith(("transformer.resblocks.", "ln_final.")):
            out["textual." + key] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"CLIP state dict has text keys this converter does not know: {abbrev(unknown)}")
    return out


def init_from_clip(model: nn.Module, clip_state_dict: Any, visual: bool | None = None, text: bool = True
                   ) -> LoadReport:
    """Initialise from an OpenAI / open_clip CLIP ViT state dict (or an ``open_clip`` model).

    ``visual=None`` loads the visual tower when it can take CLIP weights (TimeSformer, TimeMamba, ViT of the same
    width) and skips it for ViViM (whose visual weights come from Vim, see ``init_from_vim``).
    """
    sd = unwrap_state_dict(clip_state_dict)
    vis, textual = _towers(model)
    kind = _tower_kind(vis)
    if visual is None:
        visual = kind != "vivim"
    if visual and kind == "vivim":
        raise ValueError("a ViViM visual tower cannot take CLIP weights; use init_from_vim for it")
    tensors: dict[str, torch.Tensor] = {}
    if visual:
        tensors.update(map_clip_visual(sd, kind, vis))
    if text and textual is not None:
        tensors.update(map_clip_text(sd, textual))
    report = _copy_into(model, tensors, "CLIP init")
    report.ignored_source_keys = [k for k in sd if k in _CLIP_IGNORED or (k.startswith("visual.") and not visual)]
    return report


init_from_open_clip = init_from_clip


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained initialisation: DeiT
# ---------------------------------------------------------------------------------------------------------------------
_DEIT_BLOCK = {"norm1": "norm1", "norm2": "norm2", "attn.qkv": "attn.Wqkv", "attn.proj": "attn.out_proj",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def map_deit_visual(deit_sd: Mapping[str, torch.Tensor], kind: str, visual: nn.Module, patch_bias: str = "fold"
                    ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """DeiT/timm ViT keys -> visual keys of a ViT or TimeSformer tower. Returns (tensors, ignored source keys).

    The towers' patch embedding has no bias. ``patch_bias="fold"`` adds DeiT's patch-embedding bias to the patch
    position embeddings (exact, since both are added to every patch token); ``"drop"`` discards it as the reference.
    """
    if patch_bias not in ("fold", "drop"):
        raise ValueError(f"patch_bias must be 'fold' or 'drop', got {patch_bias!r}")
    if "dist_token" in deit_sd:
        raise ValueError("distilled DeiT checkpoints (with dist_token) are not supported; use the plain DeiT files")
    if kind == "timesformer":
        block_prefix = "visual.blocks.{}."
        table = _DEIT_BLOCK
        names = {"cls": "visual.cls_token", "pos": "visual.pos_embed", "patch": "visual.patch_embed.proj.weight",
                 "norm": "visual.norm"}
    elif kind == "vit":
        block_prefix = "visual.transformer.resblocks.{}."
        table = {**_DEIT_BLOCK, "norm1": "ln_1", "norm2": "ln_2"}
        names = {"cls": "visual.class_embedding", "pos": "visual.positional_embedding", "patch": "visual.conv1.weight",
                 "norm": "visual.ln_post"}
    else:
        raise ValueError("DeiT weights fit ViT or TimeSformer towers; use init_from_vim for ViViM")
    own = visual.state_dict()
    out: dict[str, torch.Tensor] = {}
    ignored, unknown = [], []
    for key, value in deit_sd.items():
        if key.startswith("head"):  # the ImageNet classifier
            ignored.append(key)
        elif key == "cls_token":
            out[names["cls"]] = value.reshape(own[names["cls"].removeprefix("visual.")].shape)
        elif key == "pos_embed":
            out[names["pos"]] = value.reshape(own[names["pos"].removeprefix("visual.")].shape).clone()
        elif key == "patch_embed.proj.weight":
            out[names["patch"]] = value.reshape(own[names["patch"].removeprefix("visual.")].shape)
        elif key == "patch_embed.proj.bias":
            continue  # handled below
        elif key in ("norm.weight", "norm.bias"):
            out[names["norm"] + key[len("norm"):]] = value
        elif key.startswith("blocks."):
            idx, suffix = key[len("blocks."):].split(".", 1)
            new = _rename(suffix, table)
            if new is None:
                unknown.append(key)
            else:
                out[block_prefix.format(idx) + new] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"DeiT state dict has keys this converter does not know: {abbrev(unknown)}")
    bias = deit_sd.get("patch_embed.proj.bias")
    if bias is not None:
        if patch_bias == "fold" and names["pos"] in out:
            pos = out[names["pos"]]
            if pos.ndim == 3:
                pos[:, 1:] += bias
            else:
                pos[1:] += bias
        else:
            ignored.append("patch_embed.proj.bias")
    return out, ignored


def init_from_deit(model: nn.Module, deit_state_dict: Any, clip_state_dict: Any | None = None,
                   patch_bias: str = "fold") -> LoadReport:
    """Initialise a ViT (or TimeSformer) visual tower from DeiT, and the text tower from CLIP when given.

    ``ln_pre`` does not exist in DeiT: it keeps its initialisation, except that (as the reference) a CLIP of the same
    width (DeiT-B with CLIP ViT-B/16) provides it.
    """
    deit = unwrap_state_dict(deit_state_dict)
    vis, textual = _towers(model)
    kind = _tower_kind(vis)
    tensors, ignored = map_deit_visual(deit, kind, vis, patch_bias)
    if clip_state_dict is not None:
        clip = unwrap_state_dict(clip_state_dict)
        if textual is not None:
            tensors.update(map_clip_text(clip, textual))
        if clip.get("visual.ln_pre.weight") is not None and clip["visual.ln_pre.weight"].shape == \
                vis.ln_pre.weight.shape:
            tensors["visual.ln_pre.weight"] = clip["visual.ln_pre.weight"]
            tensors["visual.ln_pre.bias"] = clip["visual.ln_pre.bias"]
    report = _copy_into(model, tensors, "DeiT init")
    report.ignored_source_keys = ignored
    return report


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained initialisation: Vim
# ---------------------------------------------------------------------------------------------------------------------
def resample_d_state(tensor: torch.Tensor, key: str, d_state_src: int, d_state_dst: int, dt_rank: int
                     ) -> torch.Tensor:
    """Nearest-neighbour resampling of the state axis (as the reference's hs4 variant: 16 -> 4 keeps 0, 4, 8, 12)."""
    index = torch.floor(torch.arange(d_state_dst) * (d_state_src / d_state_dst)).long()
    if key.endswith(("A_log", "A_b_log")):
        return tensor[:, index].clone()
    if key.endswith(("x_proj.weight", "x_proj_b.weight")):
        dt, b, c = tensor.split([dt_rank, d_state_src, d_state_src], dim=0)
        return torch.cat([dt, b[index], c[index]], dim=0)
    return tensor


def map_vim_visual(vim_sd: Mapping[str, torch.Tensor], visual: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    own = visual.state_dict()
    out: dict[str, torch.Tensor] = {}
    ignored, unknown = [], []
    d_dst = own["layers.0.mixer.A_log"].shape[1]
    d_src = vim_sd["layers.0.mixer.A_log"].shape[1] if "layers.0.mixer.A_log" in vim_sd else d_dst
    dt_rank = own["layers.0.mixer.dt_proj.weight"].shape[1]
    for key, value in vim_sd.items():
        if key.startswith("head."):
            ignored.append(key)
        elif key in own:
            if d_src != d_dst and ".mixer." in key:
                value = resample_d_state(value, key, d_src, d_dst, dt_rank)
            out["visual." + key] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"Vim state dict has keys this ViViM does not have: {abbrev(unknown)} (a Vim 'midclstok' "
                       "checkpoint of the same size is expected; check depth/embed_dim)")
    return out, ignored


def init_from_vim(model: nn.Module, vim_state_dict: Any, clip_state_dict: Any | None = None) -> LoadReport:
    """Initialise a ViViM visual tower from a Vim ImageNet checkpoint (``{'model': ...}``), resampling d_state when
    the model's differs (e.g. ``CLIP_ViViM_tiny_hs4``), and the text tower from CLIP when given.
    ``temporal_embedding`` (zeros) and ``image_projection`` keep their initialisation."""
    vim = unwrap_state_dict(vim_state_dict)
    vis, textual = _towers(model)
    if _tower_kind(vis) != "vivim":
        raise ValueError("Vim weights fit ViViM towers only")
    tensors, ignored = map_vim_visual(vim, vis)
    if clip_state_dict is not None and textual is not None:
        tensors.update(map_clip_text(unwrap_state_dict(clip_state_dict), textual))
    report = _copy_into(model, tensors, "Vim init")
    report.ignored_source_keys = ignored
    return report
