"""Generated datasets: layouts, official formats, determinism, and video content that agrees with the text."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lavila.data.synthetic import generate, main
from lavila.data.synthetic_video import NOUNS, VERBS
from lavila.data.video import load_clip

SMALL = dict(ego4d_videos=2, ek100_train_videos=2, ek100_test_videos=2, egoschema_questions=3, video_sec=16.0,
             fps=10.0, height=64, width=96, num_verbs=6, num_nouns=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, seed=3, **SMALL)
    return out


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_layout_and_official_columns(data):
    ann = data / "ek100" / "epic-kitchens-100-annotations"
    ret = ann / "retrieval_annotations"
    for name in ["EPIC_100_train.csv", "EPIC_100_validation.csv", "EPIC_100_verb_classes.csv",
                 "EPIC_100_noun_classes.csv"]:
        assert (ann / name).is_file()
    test = pd.read_csv(ret / "EPIC_100_retrieval_test.csv")
    assert list(test.columns) == ["narration_id", "participant_id", "video_id", "narration_timestamp",
                                  "start_timestamp", "stop_timestamp", "start_frame", "stop_frame", "narration",
                                  "verb", "verb_class", "noun", "noun_class", "all_nouns", "all_noun_classes"]
    assert list(pd.read_csv(ret / "EPIC_100_retrieval_test_sentence.csv").columns) == ["narration_id", "narration"]
    assert sorted(p.name for p in (data / "ek100" / "videos" / test["video_id"].iloc[0]).iterdir()) == \
        ["0000.mp4", "0001.mp4"]
    items = pickle.load(open(data / "ego4d" / "ego4d_train.pkl", "rb"))
    vid, start, end, narration = items[0]
    assert (data / "ego4d" / "videos" / vid / "0000.mp4").is_file() and end > start
    assert isinstance(narration, list) and narration[0].startswith("#C C ")
    questions = json.loads((data / "egoschema" / "questions.json").read_text())
    answers = json.loads((data / "egoschema" / "answers.json").read_text())
    assert set(answers) == {q["q_uid"] for q in questions} and all(0 <= a < 5 for a in answers.values())
    assert all((data / "egoschema" / "videos" / f"{q['q_uid']}.mp4").is_file() for q in questions)


def _official_relevancy(clips: pd.DataFrame, sentences: pd.DataFrame) -> np.ndarray:
    """The EK100 MIR definition written out pair by pair (independent of build_relevancy): (verb equal + IoU of
    the noun-class sets) / 2, a sentence having the classes of the clip with its narration_id."""
    import ast

    classes = [(int(r.verb_class), set(ast.literal_eval(str(r.all_noun_classes)))) for r in clips.itertuples()]
    by_id = dict(zip(clips["narration_id"].astype(str), classes))
    columns = [by_id[str(n)] for n in sentences["narration_id"]]
    out = np.zeros((len(classes), len(columns)))
    for i, (verb, nouns) in enumerate(classes):
        for j, (s_verb, s_nouns) in enumerate(columns):
            out[i, j] = 0.5 * (verb == s_verb) + 0.5 * len(nouns & s_nouns) / len(nouns | s_nouns)
    return out


def test_relevancy_pickle_is_the_official_definition(data):
    from lavila.data.relevancy import build_relevancy, load_relevancy

    ret = data / "ek100" / "epic-kitchens-100-annotations" / "retrieval_annotations"
    for split in ("train", "test"):
        clips = pd.read_csv(ret / f"EPIC_100_retrieval_{split}.csv")
        sentences = pd.read_csv(ret / f"EPIC_100_retrieval_{split}_sentence.csv")
        rel = load_relevancy(ret / "relevancy" / f"caption_relevancy_EPIC_100_retrieval_{split}.pkl")
        expected = _official_relevancy(clips, sentences)
        assert {0.0, 0.5, 1.0} <= set(np.unique(expected)), "the generated data should exercise every level"
        np.testing.assert_allclose(rel, expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(build_relevancy(clips, sentences), expected, rtol=0, atol=1e-12)
        # same verb and noun class as the sentence's clip <=> relevancy 1
        assert rel.shape == (len(clips), len(sentences)) and set(np.unique(rel)) <= {0.0, 0.5, 1.0}


def test_narrations_use_real_ek100_classes(data):
    ann = data / "ek100" / "epic-kitchens-100-annotations"
    train = pd.read_csv(ann / "EPIC_100_train.csv")
    for _, row in train.iterrows():
        verb = next(k for k, v in VERBS.items() if v[0] == row["verb_class"])
        assert row["noun"] == next(k for k, v in NOUNS.items() if v[0] == row["noun_class"])
        assert row["narration"].endswith(row["noun"]) and row["verb"] in [f[0] for f in VERBS[verb][2]]


def _colour_stats(frame: np.ndarray, rgb) -> tuple[float, float, float]:
    mask = (np.abs(frame.astype(int) - np.array(rgb)) < 45).all(-1)
    ys, xs = np.nonzero(mask)
    return (xs.mean(), ys.mean(), float(mask.sum())) if len(xs) else (np.nan, np.nan, 0.0)


def test_video_content_agrees_with_narration(data):
    """The narrated object is visible in its colour and moves as its verb says, for every test clip."""
    ann = data / "ek100" / "epic-kitchens-100-annotations"
    clips = pd.read_csv(ann / "EPIC_100_validation.csv")
    checked = 0
    for _, row in clips.iterrows():
        start = sum(float(x) * m for x, m in zip(row["start_timestamp"].split(":"), (3600, 60, 1)))
        stop = sum(float(x) * m for x, m in zip(row["stop_timestamp"].split(":"), (3600, 60, 1)))
        frames = load_clip(data / "ek100" / "videos", row["video_id"], start, stop, 8)
        colour = NOUNS[row["noun"]][1]
        (x0, y0, a0), (x1, y1, a1) = _colour_stats(frames[0], colour), _colour_stats(frames[-1], colour)
        assert a0 > 20 and a1 > 20, row["narration"]
        motion = next(v[1] for v in VERBS.values() if v[0] == row["verb_class"])
        expected = {"up": y1 < y0 - 5, "down": y1 > y0 + 5, "left": x1 < x0 - 5, "right": x1 > x0 + 5,
                    "grow": a1 > 1.5 * a0, "shrink": a0 > 1.5 * a1}[motion]
        assert expected, (row["narration"], motion, (x0, y0, a0), (x1, y1, a1))
        checked += 1
    assert checked >= 6


def test_deterministic_from_seed_and_cli(tmp_path):
    args = ["--seed", "7", "--ego4d-videos", "1", "--ek100-train-videos", "1", "--ek100-test-videos", "1",
            "--egoschema-questions", "2", "--video-sec", "6", "--chunk-len", "5", "--fps", "8", "--height", "32",
            "--width", "64"]
    main(["--out", str(tmp_path / "a"), *args])
    main(["--out", str(tmp_path / "b"), *args])
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert a == b and any(k.endswith("0001.mp4") for k in a)
    generate(tmp_path / "c", seed=8, ego4d_videos=1, ek100_train_videos=1, ek100_test_videos=1,
             egoschema_questions=2, video_sec=6, chunk_len=5, fps=8, height=32, width=64)
    assert digest(tmp_path / "c") != a


def test_bad_flags_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_verbs"):
        generate(tmp_path, num_verbs=99)
