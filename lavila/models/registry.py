"""Named model configurations (the upstream ``--model`` names stored in released checkpoints' ``args.model``).

A model is data: tower type, dimensions, temporal style, frame count and projection size. ``create_model`` turns a
config into modules; it never downloads anything (pretrained initialisation is ``lavila.models.convert``).
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

_TEXT = {"text_width": 512, "text_layers": 12, "text_heads": 8, "vocab_size": 49408, "context_length": 77}
_COMMON = {"img_size": 224, "patch_size": 16, "mlp_ratio": 4.0, "project_embed_dim": 256, "drop_path_rate": 0.0,
           "patch_dropout": 0.0, "freeze_temperature": True, "dropout_rate": 0.5, **_TEXT}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {**_COMMON, **kwargs}


_B16 = {"embed_dim": 768, "depth": 12, "num_heads": 12}

# tower: timesformer (temporal_mixer attention | mamba, attention_style), vit, vivim.
# num_frames: the frame count of the released pretraining checkpoint (fine-tuned files use 16).
MODELS: dict[str, dict[str, Any]] = {
    "CLIP_TimeSformerB16": _cfg(tower="timesformer", temporal_mixer="attention", attention_style="timesformer-div",
                                num_frames=4, pretrain="openai-clip", **_B16),
    "CLIP_FrozenInTime_TimeSformerB16": _cfg(tower="timesformer", temporal_mixer="attention",
                                             attention_style="frozen-in-time", num_frames=4, pretrain="openai-clip",
                                             **_B16),
    "CLIP_TimeMamba_like_timesformer": _cfg(tower="timesformer", temporal_mixer="mamba",
                                            attention_style="timesformer-div", num_frames=4, pretrain="openai-clip",
                                            **_B16),
    "CLIP_TimeMamba_like_frozen": _cfg(tower="timesformer", temporal_mixer="mamba", attention_style="frozen-in-time",
                                       num_frames=4, pretrain="openai-clip", **_B16),
    "CLIP_VITT16": _cfg(tower="vit", embed_dim=192, depth=12, num_heads=3, num_frames=16, fast_conv1=True,
                        pretrain="deit"),
    "CLIP_VITS16": _cfg(tower="vit", embed_dim=384, depth=12, num_heads=6, num_frames=16, fast_conv1=True,
                        pretrain="deit"),
    "CLIP_VITB16": _cfg(tower="vit", num_frames=16, fast_conv1=True, pretrain="openai-clip", **_B16),
    "CLIP_ViViM_tiny": _cfg(tower="vivim", embed_dim=192, depth=24, num_heads=None, num_frames=16, d_state=16,
                            pretrain="vim"),
    "CLIP_ViViM_tiny_hs4": _cfg(tower="vivim", embed_dim=192, depth=24, num_heads=None, num_frames=16, d_state=4,
                                pretrain="vim"),
    "CLIP_ViViM_small": _cfg(tower="vivim", embed_dim=384, depth=24, num_heads=None, num_frames=16, d_state=16,
                             pretrain="vim"),
}

OVERRIDES = ("embed_dim", "depth", "num_heads", "mlp_ratio", "img_size", "patch_size", "num_frames",
             "project_embed_dim", "drop_path_rate", "text_width", "text_layers", "text_heads", "vocab_size",
             "context_length", "freeze_temperature", "dropout_rate", "patch_dropout")


DROP_PATH_SCOPES = ("all", "reference")


def effective_drop_path_rate(name: str, rate: float, scope: str = "all") -> float:
    """The stochastic-depth rate model ``name`` trains with under ``--drop-path-scope``.

    ``all``: every tower uses ``rate``. ``reference``: TimeSformer / TimeMamba towers get 0, because the reference
    builders never pass ``drop_path_rate`` to them; ViT and ViViM keep ``rate`` (their builders pass it)."""
    if scope not in DROP_PATH_SCOPES:
        raise ValueError(f"unknown --drop-path-scope {scope!r}; use one of {', '.join(DROP_PATH_SCOPES)}")
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    if scope == "reference" and MODELS[name]["tower"] == "timesformer":
        return 0.0
    return float(rate)


def list_models() -> list[str]:
    return sorted(MODELS)


def get_model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The named config with ``overrides`` applied and checked; includes ``name``."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise TypeError(f"unknown override(s) {unknown} for {name}; valid overrides: {', '.join(OVERRIDES)}")
    config = copy.deepcopy(MODELS[name])
    config.update({k: v for k, v in overrides.items() if v is not None})
    config["name"] = name
    _validate(config)
    return config


def _validate(c: dict[str, Any]) -> None:
    problems = []
    for key in ("embed_dim", "depth", "img_size", "patch_size", "num_frames", "text_width", "text_layers",
                "text_heads", "vocab_size", "context_length"):
        if not isinstance(c[key], int) or c[key] < 1:
            problems.append(f"{key} must be a positive int, got {c[key]!r}")
    if not problems:
        if c["img_size"] % c["patch_size"]:
            problems.append(f"img_size {c['img_size']} is not a multiple of patch_size {c['patch_size']}")
        if c["tower"] != "vivim" and c["embed_dim"] % c["num_heads"]:
            problems.append(f"embed_dim {c['embed_dim']} is not divisible by num_heads {c['num_heads']}")
        if c["text_width"] % c["text_heads"]:
            problems.append(f"text_width {c['text_width']} is not divisible by text_heads {c['text_heads']}")
    for key in ("drop_path_rate", "dropout_rate", "patch_dropout"):
        if not 0.0 <= float(c[key]) < 1.0:
            problems.append(f"{key} must be in [0, 1), got {c[key]}")
    if problems:
        raise ValueError(f"invalid config for {c['name']}: " + "; ".join(problems))


def build_visual(config: dict[str, Any], output_dim: int | None) -> nn.Module:
    tower = config["tower"]
    common = {"img_size": config["img_size"], "patch_size": config["patch_size"], "num_frames": config["num_frames"],
              "output_dim": output_dim, "drop_path_rate": config["drop_path_rate"]}
    if tower == "timesformer":
        from lavila.models.timesformer import SpaceTimeTransformer

        return SpaceTimeTransformer(embed_dim=config["embed_dim"], depth=config["depth"],
                                    num_heads=config["num_heads"], mlp_ratio=config["mlp_ratio"],
                                    attention_style=config["attention_style"],
                                    temporal_mixer=config["temporal_mixer"], **common)
    if tower == "vit":
        from lavila.models.vit import VisionTransformer

        return VisionTransformer(width=config["embed_dim"], layers=config["depth"], heads=config["num_heads"],
                                 mlp_ratio=config["mlp_ratio"], fast_conv1=config["fast_conv1"],
                                 patch_dropout=config.get("patch_dropout", 0.0), **common)
    if tower == "vivim":
        from lavila.models.vivim import ViViM

        return ViViM(embed_dim=config["embed_dim"], depth=config["depth"], d_state=config["d_state"], **common)
    raise ValueError(f"unknown tower {tower!r} in config {config['name']}")


def build_textual(config: dict[str, Any]) -> nn.Module:
    from lavila.models.text import TextTransformer

    return TextTransformer(context_length=config["context_length"], vocab_size=config["vocab_size"],
                           width=config["text_width"], heads=config["text_heads"], layers=config["text_layers"],
                           output_dim=config["project_embed_dim"])


def create_model(name: str, num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """Build ``CLIP`` (visual + text tower) or, with ``num_classes``, a ``VideoClassifier`` over the visual tower
    (no text tower is built then; ``dropout_rate`` is the dropout before ``fc_cls``). Weights are randomly
    initialised; nothing is downloaded."""
    from lavila.models.clip import CLIP, VideoClassifier

    config = get_model_config(name, **overrides)
    if num_classes is not None:
        config["num_classes"] = int(num_classes)
        model: nn.Module = VideoClassifier(build_visual(config, output_dim=None), int(num_classes),
                                             dropout=config["dropout_rate"])
    else:
        model = CLIP(build_visual(config, config["project_embed_dim"]), build_textual(config),
                     freeze_temperature=config["freeze_temperature"])
    model.config = config
    model.num_frames = config["num_frames"]
    return model
