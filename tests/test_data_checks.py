"""Start-up checks of EK100-format annotations (lavila/data/checks.py): one line naming file, line and column."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
from engine_helpers import TINY_MODEL, paths, synthetic_root, tiny_pretrained_checkpoint

from lavila.data import checks
from lavila.data.checks import DataCheckError, check_cls, check_mir

pytestmark = pytest.mark.usefixtures("lavila_log_to_caplog")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_root(tmp_path_factory)


@pytest.fixture()
def split(data, tmp_path):
    """A copy of the synthetic MIR test split (clip + sentence CSV) to damage."""
    src = Path(paths(data)["mir_test"])
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_name(src.stem + "_sentence.csv"), tmp_path / (src.stem + "_sentence.csv"))
    return dst


def _edit(path: Path, column: str, row: int, value: str) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[row, column] = value
    df.to_csv(path, index=False)


def _root(data) -> str:
    return paths(data)["ek_root"]


def test_good_split_passes_and_logs_one_line(data, split, caplog):
    with caplog.at_level(logging.INFO, logger="lavila"):
        report = check_mir(split, _root(data), 15.0, training=False, flag="--val-metadata")
    assert report["rows"] == len(pd.read_csv(split)) and report["beyond_end"] == 0 and report["sentences"] > 0
    assert f"checked {split.name}" in caplog.text


def test_missing_video_names_file_line_column(data, split):
    _edit(split, "video_id", 2, "P09_99")
    with pytest.raises(DataCheckError, match=rf"^{split}, line 4, column video_id: video 'P09_99' not found under "
                                             r".*\(1 of \d+ videos missing\)"):
        check_mir(split, _root(data), 15.0, training=False, flag="--val-metadata")


def test_single_files_with_chunked_layout_suggest_chunk_length_zero(data, split, tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    for vid in pd.read_csv(split)["video_id"].unique():
        shutil.copy(Path(_root(data)) / vid / "0000.mp4", single / f"{vid}.mp4")
    with pytest.raises(DataCheckError) as info:
        check_mir(split, single, 15.0, training=False, flag="--val-metadata")
    message = str(info.value)
    assert "--video-chunk-length 0" in message and "--chunk-len" not in message and "\n" not in message
    check_mir(split, single, 0, training=False, flag="--val-metadata")  # the suggested flag works


def test_chunk_folders_with_single_file_layout_name_the_flag(data, split):
    with pytest.raises(DataCheckError, match=r"is a folder of chunks: pass --video-chunk-length"):
        check_mir(split, _root(data), 0, training=False, flag="--val-metadata")


def test_timestamps_in_seconds_get_their_own_message(data, split):
    _edit(split, "start_timestamp", 0, "12.5")
    with pytest.raises(DataCheckError, match=rf"^{split}, line 2, column start_timestamp: timestamp '12.5' does not "
                                             r"parse .*looks like seconds; write times as HH:MM:SS.ff \(e.g. "
                                             r"00:00:12.50\)"):
        check_mir(split, None, 15.0, training=False, flag="--val-metadata")


def test_unparsable_timestamp(data, split):
    _edit(split, "stop_timestamp", 1, "1:2")
    with pytest.raises(DataCheckError, match=r"line 3, column stop_timestamp: .*expected HH:MM:SS.ff"):
        check_mir(split, None, 15.0, training=False, flag="--val-metadata")


def test_stop_before_start(data, split):
    _edit(split, "stop_timestamp", 1, "00:00:00.01")
    with pytest.raises(DataCheckError, match=r"line 3, column stop_timestamp: stop 00:00:00.01 is before start"):
        check_mir(split, None, 15.0, training=False, flag="--val-metadata")


def test_segments_beyond_the_video_end_are_counted_once(data, split, caplog):
    _edit(split, "stop_timestamp", 0, "00:05:00.00")  # the synthetic videos last 30 s
    _edit(split, "stop_timestamp", 3, "00:01:00.00")
    with caplog.at_level(logging.WARNING, logger="lavila"):
        report = check_mir(split, _root(data), 15.0, training=False, flag="--val-metadata")
    assert report["beyond_end"] == 2
    (line,) = [r.getMessage() for r in caplog.records if "end after their video" in r.getMessage()]
    assert "2 of" in line and "line 2" in line and "300.00 s > 30.00 s" in line


def test_missing_column_in_clip_csv(data, split):
    pd.read_csv(split).drop(columns=["narration"]).to_csv(split, index=False)
    with pytest.raises(DataCheckError, match=rf"^{split}, line 1: the clip CSV lacks column\(s\) narration"):
        check_mir(split, None, 15.0, training=False, flag="--val-metadata")


def test_sentence_csv_missing_column(data, split):
    sentences = split.with_name(split.stem + "_sentence.csv")
    pd.read_csv(sentences).drop(columns=["narration"]).to_csv(sentences, index=False)
    with pytest.raises(DataCheckError, match=rf"^{sentences}, line 1: the sentence CSV lacks column\(s\) narration"):
        check_mir(split, None, 15.0, training=False, flag="--val-metadata")


@pytest.mark.parametrize("which", ["clips", "sentences"])
def test_empty_narration(data, split, which):
    path = split if which == "clips" else split.with_name(split.stem + "_sentence.csv")
    _edit(path, "narration", 1, " ")
    with pytest.raises(DataCheckError, match=rf"^{path}, line 3, column narration: empty narration"):
        check_mir(split, None, 15.0, training=False, flag="--val-metadata")


def test_cls_labels_must_be_class_ids(data, tmp_path):
    src = Path(paths(data)["cls_val"])
    path = tmp_path / src.name
    shutil.copy(src, path)
    _edit(path, "verb_class", 0, "take")
    with pytest.raises(DataCheckError, match=r"line 2, column verb_class: 'take' is not a class id"):
        check_cls(path, None, 15.0, flag="--val-metadata")


def test_header_only_read_of_many_rows_is_fast(data, split):
    # 20k rows over the same few videos: the video headers are read once per video, not per row
    big = pd.concat([pd.read_csv(split)] * (20000 // len(pd.read_csv(split)) + 1), ignore_index=True)
    big.to_csv(split, index=False)
    import time

    tic = time.perf_counter()
    report = check_mir(split, _root(data), 15.0, training=False, flag="--val-metadata")
    assert report["rows"] >= 20000
    assert time.perf_counter() - tic < 20  # generous on a busy CI core; benchmarks/RESULTS.md has the figure


# ---- through the entry points: one error line, nonzero exit ---------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return tiny_pretrained_checkpoint(tmp_path_factory)


def test_engine_stops_before_the_model_with_one_line(data, split, pretrained, tmp_path, capsys, monkeypatch):
    from lavila.train.finetune_retrieval import RetrievalEngine
    from lavila.train.loop import main

    _edit(split, "video_id", 0, "P09_99")
    monkeypatch.setattr(RetrievalEngine, "build_model", lambda *a: pytest.fail("model built before the check"))
    p = paths(data)
    code = main(RetrievalEngine(), ["--root", p["ek_root"], "--train-metadata", p["mir_train"], "--val-metadata",
                                    str(split), "--pretrain-model", str(pretrained), "--output-dir",
                                    str(tmp_path / "out"), *TINY_MODEL])
    assert code != 0
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert f"{split}, line 2, column video_id: video 'P09_99' not found" in line
    assert "--skip-policy" not in line


def test_eval_zeroshot_checks_before_the_model(data, split, pretrained, tmp_path, capsys, monkeypatch):
    import eval_zeroshot

    _edit(split, "start_timestamp", 0, "3.2")
    monkeypatch.setattr(eval_zeroshot, "build_model", lambda *a: pytest.fail("model built before the check"))
    code = eval_zeroshot.main(["--resume", str(pretrained), "--mir-root", _root(data), "--mir-metadata", str(split),
                               "--output-dir", str(tmp_path), "--device", "cpu"])
    assert code != 0
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert line.startswith(f"error: {split}, line 2, column start_timestamp")
    assert "looks like seconds" in line


def test_relevancy_absent_message_names_the_cli(data, split, caplog):
    from lavila.data.ek100 import EK100MIRDataset
    from lavila.data.relevancy import resolve_relevancy

    ds = EK100MIRDataset(_root(data), split, is_training=False, num_frames=2, crop_size=32)
    with caplog.at_level(logging.WARNING, logger="lavila"):
        resolve_relevancy(ds.clips, ds.sentences, split)
    assert "rebuilt in memory" in caplog.text and "python -m lavila.data.relevancy --clips" in caplog.text
    assert checks  # module imported for the checks above


def test_ego4d_items_resolve_and_are_ordered(data):
    from lavila.data.checks import check_clip_items

    root = paths(data)["ego4d_root"]
    vid = sorted(p.name for p in Path(root).iterdir())[0]
    assert check_clip_items([(vid, 1.0, 2.0, "x")], "meta.pkl", root, 15.0)["videos"] == 1
    with pytest.raises(DataCheckError, match=r"^meta.pkl, item 1, end_sec: end 1.0 is before start 2.0"):
        check_clip_items([(vid, 1.0, 2.0, "x"), (vid, 2.0, 1.0, "y")], "meta.pkl", root, 15.0)
    with pytest.raises(DataCheckError, match=r"^meta.pkl, item 1, video_id: video 'nope' not found"):
        check_clip_items([(vid, 1.0, 2.0, "x"), ("nope", 1.0, 2.0, "y")], "meta.pkl", root, 15.0)
