"""The CLIP BPE tokenizer: shapes, special tokens, truncation, and equality with open_clip's reference."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from lavila.data.tokenizer import EOT_TOKEN, SOT_TOKEN, get_tokenizer, tokenize

SAMPLES = ["take plate", "put down plate", "#C C opens the fridge", "wash hands!!", "cut onion into 2 pieces",
           "Pick-Up the KNIFE", "it's   the chef's  café &amp;amp; crème brûlée", "", "12345 ÄÖÜ 日本語",
           "<start_of_text> x <end_of_text>", "😀 emoji 🍳 pan"]
OPEN_CLIP_ABSENT = "open_clip_torch is not installed: nothing to compare the ids with"


def test_shapes_single_and_list():
    assert tokenize("take plate").shape == (77,)
    assert tokenize(["take plate", "wash cup", "x"]).shape == (3, 77)
    assert tokenize("take plate").dtype == torch.long
    assert tokenize(["a"], context_length=16).shape == (1, 16)


def test_special_tokens_and_padding():
    ids = tokenize("take plate")
    n = int((ids != 0).sum())
    assert ids[0] == SOT_TOKEN and ids[n - 1] == EOT_TOKEN
    assert (ids[n:] == 0).all()
    assert get_tokenizer().decode(ids.tolist()) == "take plate"


def test_truncation_forces_eot_last():
    ids = tokenize("word " * 200)
    assert ids[0] == SOT_TOKEN and ids[-1] == EOT_TOKEN and (ids != 0).all()


def test_literal_special_tokens_are_the_special_ids():
    """open_clip's BPE cache holds the special tokens, so a literal "<end_of_text>" in a text is EOT; so here."""
    assert tokenize("<start_of_text> x <end_of_text>")[:5].tolist() == [SOT_TOKEN, SOT_TOKEN, 343, EOT_TOKEN,
                                                                        EOT_TOKEN]


def test_matches_open_clip_reference():
    open_clip = pytest.importorskip("open_clip", reason=OPEN_CLIP_ABSENT)
    texts = SAMPLES + ["word " * 200]
    assert torch.equal(tokenize(texts), open_clip.tokenize(texts))


def test_matches_open_clip_on_real_ek100_narrations(ek100_annotations):
    """Every narration of the MIR sentence file (lavila/data/tokenizer.py's docstring has the full comparison)."""
    open_clip = pytest.importorskip("open_clip", reason=OPEN_CLIP_ABSENT)
    df = pd.read_csv(ek100_annotations / "retrieval_annotations" / "EPIC_100_retrieval_test_sentence.csv")
    texts = df["narration"].astype(str).tolist()
    assert len(texts) > 1000
    assert torch.equal(tokenize(texts), open_clip.tokenize(texts))


def test_rejects_non_string():
    with pytest.raises(TypeError, match="strings"):
        tokenize(["ok", 3])  # type: ignore[list-item]
