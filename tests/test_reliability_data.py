"""Bad data: each broken video / annotation gives a counted skip (training) or an error naming the file (evaluation,
start-up). Property test: random bytes as videos and random metadata rows never crash the loader and never give a
sample for the wrong index."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from engine_helpers import paths, synthetic_root
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lavila.data.ego4d import Ego4DPretrainDataset
from lavila.data.ek100 import EK100MIRDataset, read_ek100_csv
from lavila.data.loader import SkipCollate, SkipTracker, attach_skip_tracker
from lavila.data.tokenizer import tokenize
from lavila.data.video import VideoDecodeError
from lavila.train.sampler import PerSampleSeededDataset

KINDS = ("good", "corrupt", "truncated", "empty", "png", "text", "audio_only", "missing")


def _make_bad_videos(good_chunk: Path, root: Path) -> None:
    """One folder of 15-s chunks per kind: root/<kind>/0000.mp4 (``missing`` has no folder)."""
    raw = good_chunk.read_bytes()
    content = {
        "good": raw,
        "corrupt": raw[:64] + bytes(np.random.default_rng(0).integers(0, 256, len(raw) - 64, dtype=np.uint8)),
        "truncated": raw[: len(raw) // 3],
        "empty": b"",
        "png": b"\x89PNG\r\n\x1a\n" + bytes(200),
        "text": b"this is not a video\n" * 20,
    }
    for kind, data in content.items():
        (root / kind).mkdir(parents=True)
        (root / kind / "0000.mp4").write_bytes(data)
    _write_audio_only(root / "audio_only" / "0000.mp4")


def _write_audio_only(path: Path) -> None:
    import av

    path.parent.mkdir(parents=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(4):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    data = synthetic_root(tmp_path_factory)
    good = next(Path(paths(data)["ego4d_root"]).glob("*/0000.mp4"))
    root = tmp_path_factory.mktemp("bad_videos")
    _make_bad_videos(good, root / "videos")
    return root


def _metadata(root: Path, rows: list) -> Path:
    path = root / f"meta_{len(list(root.glob('meta_*.pkl')))}.pkl"
    path.write_bytes(pickle.dumps(rows))
    return path


def _dataset(root: Path, rows: list, training: bool) -> Ego4DPretrainDataset:
    return Ego4DPretrainDataset(root / "videos", _metadata(root, rows), num_frames=2, crop_size=32,
                                is_training=training)


def test_training_skips_and_counts_every_bad_video(bad_root):
    rows = [(kind, 1.0, 2.5, f"caption {i}") for i, kind in enumerate(KINDS)]
    rows.append(("good", 3.0, 1.0, "start after end"))
    ds = _dataset(bad_root, rows, training=True)
    tracker = SkipTracker(max_paths=20)
    attach_skip_tracker(ds, tracker)
    batch = SkipCollate(tracker)([ds[i] for i in range(len(ds))])
    frames, tokens = batch
    assert frames.shape[0] == 1 and torch.equal(tokens[0], tokenize("caption 0"))  # only the good clip
    assert tracker.count == len(rows) - 1
    report = "\n".join(tracker.first_paths())
    for kind in KINDS[1:]:
        assert str(bad_root / "videos" / kind) in report, (kind, report)
    assert "start 3.0 > end 1.0" in report
    assert "file is empty (0 bytes)" in report and "not found" in report


@pytest.mark.parametrize("kind", KINDS[1:])
def test_evaluation_raises_naming_the_file(bad_root, kind):
    ds = _dataset(bad_root, [(kind, 1.0, 2.5, "x")], training=False)
    with pytest.raises(VideoDecodeError) as info:
        ds[0]
    assert str(bad_root / "videos" / kind) in str(info.value)


def test_evaluation_start_after_end_is_a_clear_error(bad_root):
    ds = _dataset(bad_root, [("good", 3.0, 1.0, "x")], training=False)
    with pytest.raises(VideoDecodeError, match=r"start 3.0 > end 1.0"):
        ds[0]


def test_whole_batch_unreadable_comes_out_as_none(bad_root):
    ds = _dataset(bad_root, [("corrupt", 0.0, 1.0, "a"), ("missing", 0.0, 1.0, "b")], training=True)
    tracker = SkipTracker()
    attach_skip_tracker(ds, tracker)
    assert SkipCollate(tracker)([ds[0], ds[1]]) is None and tracker.count == 2


def test_bad_metadata_item_is_a_startup_error_naming_the_file(bad_root):
    path = _metadata(bad_root, [("good", 0.0, 1.0, "ok"), ("good", 0.0, 1.0, 42)])
    with pytest.raises(ValueError, match=rf"{path}: item 1"):
        Ego4DPretrainDataset(bad_root / "videos", path, num_frames=2, crop_size=32)


def test_csv_missing_column_names_file_and_column(tmp_path, tmp_path_factory):
    src = Path(paths(synthetic_root(tmp_path_factory))["mir_train"])
    df = pd.read_csv(src).drop(columns=["stop_timestamp"])
    bad = tmp_path / "EPIC_100_retrieval_train.csv"
    df.to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"lacks EK100 column\(s\) \['stop_timestamp'\]") as info:
        read_ek100_csv(bad)
    assert str(bad) in str(info.value)


def test_relevancy_pickle_of_wrong_shape_names_file_and_shapes(tmp_path, tmp_path_factory):
    p = paths(synthetic_root(tmp_path_factory))
    ann = Path(p["mir_train"])
    for name in (ann.name, ann.stem + "_sentence.csv"):
        shutil.copy(ann.parent / name, tmp_path / name)
    (tmp_path / "relevancy").mkdir()
    bad = tmp_path / "relevancy" / f"caption_relevancy_{ann.stem}.pkl"
    bad.write_bytes(pickle.dumps(np.zeros((3, 2), dtype=np.float32)))
    with pytest.raises(ValueError) as info:
        EK100MIRDataset(p["ek_root"], tmp_path / ann.name, is_training=True, num_frames=2, crop_size=32)
    assert str(bad) in str(info.value) and "(3, 2)" in str(info.value)


def test_malicious_annotation_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps([("v", 0.0, 1.0, "x"), Payload()]))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        Ego4DPretrainDataset(tmp_path, path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ property test

_time = st.one_of(st.floats(-5, 40, allow_nan=False), st.just(float("nan")), st.just(float("inf")))
_row = st.tuples(st.sampled_from([*KINDS, "fuzz"]), _time, _time)


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(video_bytes=st.binary(min_size=0, max_size=2048), rows=st.lists(_row, min_size=1, max_size=6),
       prefix_real_header=st.booleans())
def test_random_videos_and_rows_never_crash_or_misindex(bad_root, video_bytes, rows, prefix_real_header):
    fuzz = bad_root / "videos" / "fuzz" / "0000.mp4"
    fuzz.parent.mkdir(exist_ok=True)
    header = (bad_root / "videos" / "good" / "0000.mp4").read_bytes()[:512] if prefix_real_header else b""
    fuzz.write_bytes(header + video_bytes)
    # The caption encodes the row index, so a sample returned for the wrong index is detected.
    ds = PerSampleSeededDataset(_dataset(bad_root, [(v, s, e, f"row {i}") for i, (v, s, e) in enumerate(rows)],
                                         training=True), seed=0)
    tracker = SkipTracker(max_paths=10)
    attach_skip_tracker(ds.dataset, tracker)
    returned = 0
    for i in range(len(rows)):
        sample = ds[i]
        if sample is None:
            continue
        returned += 1
        frames, tokens = sample
        assert frames.shape == (3, 2, 32, 32) and torch.isfinite(frames).all()
        assert torch.equal(tokens, tokenize(f"row {i}"))
    assert returned + len(tracker.first_paths()) == len(rows)


# ------------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("fused", [True, False])
def test_first_read_of_a_video_equals_later_reads(tmp_path_factory, fused):
    """Decoding must not depend on what was read before (the fused decode+resize path once decoded the first clip
    of each video differently): bit-identical resume relies on it."""
    p = paths(synthetic_root(tmp_path_factory))

    def make():
        ds = Ego4DPretrainDataset(p["ego4d_root"], p["ego4d_meta"], num_frames=2, crop_size=32, is_training=True,
                                  fused_resize=fused)
        return PerSampleSeededDataset(ds, seed=3)

    order = [5, 0, 12, 5, 0]
    warm = make()
    later = [warm[i][0] for i in order]
    for i, frames in zip(order, later):
        first = make()[i][0]  # a fresh dataset: this is the first read of that video
        assert torch.equal(first, frames), i


def test_synthetic_generate_without_egoschema_questions(tmp_path):
    from lavila.data.synthetic import generate

    manifest = generate(tmp_path, seed=1, ego4d_videos=1, ek100_train_videos=1, ek100_test_videos=1,
                        egoschema_questions=0, video_sec=4.0)
    assert manifest["egoschema"]["questions_count"] == 0
    assert (tmp_path / "egoschema" / "questions.json").read_text().strip() == "[]"
