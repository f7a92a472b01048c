"""Data: tokenizer, video decoding, transforms, datasets on the real Ego4D / EK100 / EgoSchema formats, loaders.

Submodules are imported on demand (``from lavila.data.ek100 import EK100MIRDataset``); only the tokenizer is
re-exported here.
"""
from lavila.data.tokenizer import tokenize

__all__ = ["tokenize"]
