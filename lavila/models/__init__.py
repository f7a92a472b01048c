"""Video-language models: named configs, towers, the CLIP wrapper and checkpoint conversion.

Importing this package never imports flash_attn / mamba_ssm / causal_conv1d / triton.
"""
from lavila.models.clip import CLIP, VideoClassifier
from lavila.models.registry import create_model, get_model_config, list_models

__all__ = ["CLIP", "VideoClassifier", "create_model", "get_model_config", "list_models"]
