"""Relevancy matrix: verb-IoU / noun-IoU mean, sentence classes by narration_id, pickle I/O and CLI."""
from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from lavila.data.relevancy import (
    build_relevancy,
    load_relevancy,
    main,
    parse_class_list,
    resolve_relevancy,
    save_relevancy,
)


@pytest.fixture()
def tiny():
    clips = pd.DataFrame({
        "narration_id": ["a", "b", "c"],
        "verb_class": [1, 1, 2],
        "all_noun_classes": ["[3]", "[3, 4]", "[5]"],
    })
    sentences = pd.DataFrame({"narration_id": ["c", "b"], "narration": ["x", "y"]})
    return clips, sentences


def test_hand_computed_values(tiny):
    clips, sentences = tiny
    rel = build_relevancy(clips, sentences)
    # columns: sentence "c" (verb 2, nouns {5}), sentence "b" (verb 1, nouns {3, 4})
    expected = np.array([
        [0.0, 0.5 * (1 + 1 / 2)],  # a: verb 1, {3}: vs c -> 0; vs b -> verb 1, noun IoU 1/2
        [0.0, 1.0],                # b: itself
        [1.0, 0.0],                # c: itself
    ])
    np.testing.assert_allclose(rel, expected, atol=0)
    assert rel.dtype == np.float64 and rel.shape == (3, 2)


def test_exact_thirds_are_correctly_rounded_doubles():
    clips = pd.DataFrame({"narration_id": ["a", "b"], "verb_class": [0, 0],
                          "all_noun_classes": ["[1, 2, 3]", "[1]"]})
    rel = build_relevancy(clips, clips[["narration_id"]])
    assert rel[0, 1] == 0.5 * (1.0 + 1.0 / 3.0)


def test_sentence_source_table_and_missing_ids(tiny):
    clips, sentences = tiny
    with pytest.raises(ValueError, match="not found among the clips"):
        build_relevancy(clips, pd.DataFrame({"narration_id": ["zz"]}))
    rel = build_relevancy(clips.iloc[:1], sentences, source_df=clips)
    np.testing.assert_allclose(rel, [[0.0, 0.75]])
    with pytest.raises(ValueError, match="lacks column"):
        build_relevancy(clips.drop(columns=["verb_class"]), sentences)


def test_parse_class_list():
    assert parse_class_list("[2, 49]") == [2, 49]
    assert parse_class_list([7]) == [7]
    assert parse_class_list(np.array([1, 2])) == [1, 2]
    with pytest.raises(ValueError, match="cannot parse"):
        parse_class_list("2;49")


def test_save_load_roundtrip_and_shape_check(tmp_path, tiny):
    clips, sentences = tiny
    rel = build_relevancy(clips, sentences)
    path = tmp_path / "rel" / "caption_relevancy.pkl"
    save_relevancy(rel, path)
    np.testing.assert_array_equal(load_relevancy(path, expected_shape=(3, 2)), rel)
    with pytest.raises(ValueError, match=r"shape \(3, 2\) but the annotations give \(4, 2\)"):
        load_relevancy(path, expected_shape=(4, 2))
    with pytest.raises(FileNotFoundError, match="python -m lavila.data.relevancy"):
        load_relevancy(tmp_path / "missing.pkl")


def test_resolve_relevancy_prefers_given_then_default_pickle_then_rebuilds(tmp_path, tiny):
    clips, sentences = tiny
    csv = tmp_path / "EPIC_100_retrieval_test.csv"
    rebuilt = resolve_relevancy(clips, sentences, csv)  # no pickle anywhere: rebuilt from the tables
    np.testing.assert_array_equal(rebuilt, build_relevancy(clips, sentences))
    marked = rebuilt + 1.0
    save_relevancy(marked, tmp_path / "relevancy" / "caption_relevancy_EPIC_100_retrieval_test.pkl")
    np.testing.assert_array_equal(resolve_relevancy(clips, sentences, csv), marked)  # the default place
    save_relevancy(marked * 2, tmp_path / "mine.pkl")
    np.testing.assert_array_equal(resolve_relevancy(clips, sentences, csv, tmp_path / "mine.pkl"), marked * 2)
    with pytest.raises(FileNotFoundError, match="gone.pkl"):
        resolve_relevancy(clips, sentences, csv, tmp_path / "gone.pkl")  # a given path must exist


def test_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(ValueError("x"), f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_relevancy(path)


def test_cli_writes_pickle(tmp_path, tiny, capsys):
    clips, sentences = tiny
    clips.to_csv(tmp_path / "clips.csv", index=False)
    sentences.to_csv(tmp_path / "sentences.csv", index=False)
    out = tmp_path / "out.pkl"
    main(["--clips", str(tmp_path / "clips.csv"), "--sentences", str(tmp_path / "sentences.csv"), "--out", str(out)])
    assert "3 x 2" in capsys.readouterr().out
    np.testing.assert_array_equal(load_relevancy(out), build_relevancy(clips, sentences))
    with pytest.raises(SystemExit, match="not found"):
        main(["--clips", str(tmp_path / "nope.csv"), "--sentences", str(tmp_path / "sentences.csv"),
              "--out", str(out)])


def test_real_ek100_test_relevancy(ek100_annotations):
    ret = ek100_annotations / "retrieval_annotations"
    clips = pd.read_csv(ret / "EPIC_100_retrieval_test.csv")
    sentences = pd.read_csv(ret / "EPIC_100_retrieval_test_sentence.csv")
    rel = build_relevancy(clips, sentences)
    assert rel.shape == (9668, 3842)
    # every clip and every caption has an exact match (its own narration's classes)
    assert (rel == 1).any(axis=1).all() and (rel == 1).any(axis=0).all()
    assert 0.05 < (rel > 0).mean() < 0.2
    assert rel.min() >= 0 and rel.max() == 1
