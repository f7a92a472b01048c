"""PyAV's seeking reader: frame ``i`` found by its timestamp gives the frames that counting from the start (and
decord's index) gives; irregular timestamps are never seeked on."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lavila.data.video import _FileSession, open_video
from lavila.data.video_readers import PyAVReader, decord_available

ID_SETS = [[0], [0, 0, 1], [5, 11, 12, 13], [7, 30, 31, 47], [59], [40, 58, 59, 59], [3, 200], [12, 24, 36, 48]]


def encode(path: Path, n: int = 60, pts_ms: list[int] | None = None, gop: int = 12, keys: tuple[int, ...] = (),
           rate: Fraction | int = 30, audio: bool = False) -> Path:
    """n frames of distinct grey levels; ``gop``-frame GOPs with 3 B-frames (decode order != presentation order),
    plus key frames forced at ``keys``; ``pts_ms`` gives irregular timestamps (a variable-frame-rate file);
    ``audio`` adds an AAC track (as in Ego4D's chunks)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(gop), "bf": "3", "threads": "1", "sc_threshold": "0"}
        sound = container.add_stream("aac", rate=48000) if audio else None
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 9) % 256, np.uint8), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            if i in keys:
                frame.pict_type = av.video.frame.PictureType.I
            for packet in stream.encode(frame):
                container.mux(packet)
            if sound is not None and i % 2 == 0:
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 48000, i // 2 * 1024
                for packet in sound.encode(chunk):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            for packet in sound.encode():
                container.mux(packet)
    return path


def sequential(path: Path, ids: list[int]) -> np.ndarray:
    reader = PyAVReader(str(path), 1)
    reader._grid = None  # count frames from the start of the file
    return reader.get(ids)


@pytest.fixture(scope="module")
def regular(tmp_path_factory) -> Path:
    return encode(tmp_path_factory.mktemp("seek") / "regular.mp4")


@pytest.fixture(scope="module")
def irregular(tmp_path_factory) -> Path:
    steps = np.random.default_rng(0).integers(20, 50, 59)
    return encode(tmp_path_factory.mktemp("seek") / "vfr.mp4", pts_ms=[0] + np.cumsum(steps).tolist())


def test_seeking_gives_the_frames_of_sequential_decoding(regular):
    reader = PyAVReader(str(regular), 1)
    assert reader.seekable and reader.num_frames == 60
    for ids in ID_SETS:  # repeated calls on one reader: seeks back and forth
        frames = reader.get(ids)
        assert frames.shape == (len(ids), 48, 64, 3)
        assert np.array_equal(frames, sequential(regular, ids)), ids
    assert reader.seekable  # no fallback happened
    levels = reader.get([0, 13, 59])[:, 20, 30, 0].astype(int)
    assert np.all(np.abs(levels - np.array([0, 117, (59 * 9) % 256])) <= 3)  # the frames asked for


def test_sparse_frames_of_a_long_video_seek_past_whole_gops(tmp_path):
    path = encode(tmp_path / "long.mp4", n=240)
    ids = [10, 70, 130, 190, 239]
    reader = PyAVReader(str(path), 1)
    frames = reader.get(ids)
    counting = PyAVReader(str(path), 1)
    counting._grid = None
    assert np.array_equal(frames, counting.get(ids))
    assert counting.decoded_frames == 240
    assert reader.decoded_frames <= 100  # a seek per wanted frame after the first GOP (decord's index does the same)


def test_key_frame_intervals_longer_than_first_seen_still_find_every_frame(tmp_path):
    # key frames at 0, 3, 6, then every 24: the first interval seen (3) underestimates the later ones, so a seek
    # can land behind the frame it left from; decoding then runs on to the target
    path = encode(tmp_path / "varying.mp4", n=120, gop=24, keys=(3, 6))
    for ids in ([1, 4, 8, 20], [1, 4, 7, 40, 70, 100, 119], [2, 5, 29, 31, 55], [0, 119]):
        reader = PyAVReader(str(path), 1)
        assert np.array_equal(reader.get(ids), sequential(path, ids)), ids
        assert reader.seekable


class _LandsLate:
    """A container whose first ``times`` seeks land ``frames`` frames later than asked (as some demuxers do)."""

    def __init__(self, container, step: int, frames: int, times: int) -> None:
        self._container, self._shift, self.left = container, frames * step, times

    def seek(self, offset: int, **kwargs) -> None:
        if self.left > 0:
            self.left -= 1
            offset += self._shift
        self._container.seek(offset, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._container, name)


def test_a_seek_that_lands_past_its_target_is_retried_further_back(regular):
    reader = PyAVReader(str(regular), 1)
    reader._container = _LandsLate(reader._container, reader._grid[1], frames=14, times=3)
    ids = [30, 31, 47]
    assert np.array_equal(reader.get(ids), sequential(regular, ids))
    assert reader.seekable and reader._container.left == 0  # retried by seeking, not by counting from frame 0


@pytest.mark.skipif(not decord_available(), reason="decord not installed (x86-64 only)")
def test_seeking_gives_decords_frames(regular):
    decord_reader, reader = open_video(regular, "decord"), PyAVReader(str(regular), 1)
    for ids in ID_SETS:
        assert np.array_equal(reader.get(ids), decord_reader.get(ids)), ids


@pytest.mark.parametrize("rate,audio", [(Fraction(30000, 1001), False), (Fraction(60000, 1001), False), (25, False),
                                        (30, True)])
def test_common_constant_rates_and_an_audio_track_are_seeked(tmp_path, rate, audio):
    # 29.97-fps files and files with audio end a few ticks short of frames x step: still a grid
    path = encode(tmp_path / "v.mp4", n=100, rate=rate, audio=audio)
    reader = PyAVReader(str(path), 1)
    assert reader.seekable
    for ids in ([0, 13, 14, 60], [33, 98, 99], [5, 50, 95]):
        assert np.array_equal(reader.get(ids), sequential(path, ids)), ids
    assert reader.seekable


def test_a_missing_frame_is_not_taken_for_a_grid(tmp_path):
    import av

    path = tmp_path / "gap.mp4"  # frames at 0..49 and 51..100 (in 1/30 s): frame 50 is missing
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"preset": "veryfast", "g": "12", "threads": "1"}
        stream.codec_context.time_base = Fraction(1, 30)
        for k, slot in enumerate(j for j in range(101) if j != 50):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (k * 7) % 256, np.uint8), format="rgb24")
            frame.pts, frame.time_base = slot, Fraction(1, 30)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    reader = PyAVReader(str(path), 1)
    assert not reader.seekable  # frame 60 is the 60th frame (decord's index), not the frame at 60/30 s
    reader._grid = (0, 512)  # even when a header claims a grid, the continuity check on decoded frames falls back
    assert np.array_equal(reader.get([60]), sequential(path, [60]))
    assert not reader.seekable


def test_irregular_timestamps_are_decoded_from_the_start(irregular):
    reader = PyAVReader(str(irregular), 1)
    assert not reader.seekable  # average rate != nominal rate: no grid
    assert np.array_equal(reader.get([4, 30, 59]), sequential(irregular, [4, 30, 59]))


def test_a_timestamp_off_the_grid_falls_back_to_counting(regular):
    reader = PyAVReader(str(regular), 1)
    start, step = reader._grid
    reader._grid = (start, step + 1)  # a header that lies: decoded timestamps fall off this grid
    frames = reader.get([7, 30, 31])
    assert not reader.seekable
    assert np.array_equal(frames, sequential(regular, [7, 30, 31]))


@pytest.mark.skipif(not decord_available(), reason="decord not installed (x86-64 only)")
def test_auto_picks_pyav_when_it_can_seek_and_decord_otherwise(regular, irregular):
    session = _FileSession("auto", 1)
    session.open(str(regular))
    session.open(str(irregular))
    assert session._readers[str(regular)][0] == "pyav"
    assert session._readers[str(irregular)][0] == "decord"
    scaled = _FileSession("auto", 1, size=(24, 32))
    scaled.open(str(regular))
    assert scaled._readers[str(regular)][0] == "decord"  # decoder scaling: decord first, as before
    assert np.array_equal(session.fetch(str(irregular), [4, 30]), sequential(irregular, [4, 30]))


def test_frame_conversion_uses_the_decode_thread_count(regular):
    # PyAV's default conversion starts one swscale thread per host CPU for every frame (~120 per DataLoader worker
    # on a many-core host), which capped the 2-worker loader at raw decord's speed; one thread is 1.4-8x faster
    from lavila.data.video_readers import conversion_takes_threads

    if not conversion_takes_threads():
        pytest.skip("this PyAV's frame conversion takes no thread count")
    assert PyAVReader(str(regular), 1)._convert["threads"] == 1
    assert PyAVReader(str(regular), 3)._convert["threads"] == 3
