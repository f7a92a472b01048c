"""EgoSchema scoring and the submission files."""
from __future__ import annotations

import csv
import json

import pytest

from lavila.evaluation.egoschema import load_answers, load_predictions, score, write_predictions


def test_score_counts_only_answered_questions():
    preds = {"q1": 0, "q2": 3, "q3": 1}
    answers = {"q1": 0, "q2": 2, "q4": 1}
    out = score(preds, answers)
    assert out == {"accuracy": 0.5, "correct": 1, "total": 2, "unanswered": 1, "missing": 1}


def test_write_and_reload_submission(tmp_path):
    preds = {"a-1": 4, "b-2": 0}
    json_path, csv_path = write_predictions(preds, tmp_path / "out", "sub")
    assert json.loads(json_path.read_text()) == preds
    assert load_predictions(json_path) == preds
    with open(csv_path) as f:
        assert list(csv.reader(f)) == [["q_uid", "answer"], ["a-1", "4"], ["b-2", "0"]]


def test_bad_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="answers file"):
        load_answers(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_answers(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_answers(bad)
    bad.write_text('{"q": "x"}')
    with pytest.raises(ValueError, match="integers"):
        load_answers(bad)
