"""Video decoding, frame sampling, chunk layouts, bad files and clip transforms."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lavila.data.synthetic_video import write_video
from lavila.data.transforms import NORMALIZATION, NormalizeVideo, VideoTransform, get_normalization
from lavila.data.video import (
    VideoDecodeError,
    find_chunk_layout,
    get_frame_ids,
    load_clip,
    load_frames,
)
from lavila.data.video_readers import decord_available

BACKENDS = ["pyav"] + (["decord"] if decord_available() else [])
RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def solid(colour, n: int, h: int = 32, w: int = 64, ramp: bool = False):
    """n frames of one colour; with ``ramp`` the green channel encodes the frame number (0, 5, 10, ...)."""
    for i in range(n):
        frame = np.empty((h, w, 3), np.uint8)
        frame[:] = colour
        if ramp:
            frame[..., 1] = min(5 * i, 255)
        yield frame


def write_chunks(video_dir: Path, colours, fps: float = 10.0, chunk_sec: float = 15.0, names=None, last_frames=None):
    for k, colour in enumerate(colours):
        n = int(round(chunk_sec * fps)) if last_frames is None or k < len(colours) - 1 else last_frames
        name = names[k] if names else f"{k:04d}.mp4"
        write_video(video_dir / name, solid(colour, n), fps)


def dominant(frame: np.ndarray) -> str:
    r, g, b = frame.reshape(-1, 3).mean(0)
    return "red" if r > max(g, b) + 50 else "blue" if b > max(r, g) + 50 else "green" if g > max(r, b) + 50 else "?"


def test_frame_ids_are_segment_midpoints():
    assert get_frame_ids(0, 40, 4) == [5, 15, 25, 35]
    assert get_frame_ids(100, 108, 2) == [102, 106]


def test_frame_ids_jitter_stays_in_segments():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        ids = get_frame_ids(0, 40, 4, jitter=True, generator=g)
        for k, i in enumerate(ids):
            assert 10 * k - 0.5 * 39 / 4 <= i + 1 and i <= 10 * k + 10
        assert ids == sorted(ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_straddling_chunk_boundary_reads_both_chunks_in_order(tmp_path, backend):
    write_chunks(tmp_path / "vid", [RED, BLUE])
    frames = load_clip(tmp_path, "vid", 13.0, 17.0, 4, chunk_len=15, backend=backend)
    assert frames.shape == (4, 32, 64, 3) and frames.dtype == np.uint8
    assert [dominant(f) for f in frames] == ["red", "red", "blue", "blue"]


def test_lavila_second_naming_and_mp4_folder_are_detected(tmp_path):
    write_chunks(tmp_path / "vid.mp4", [RED, GREEN, BLUE], names=["0.mp4", "15.mp4", "30.mp4"])
    assert find_chunk_layout(tmp_path / "vid.mp4", 15) == ("seconds", (0, 1, 2))
    frames = load_clip(tmp_path, "vid", 28.0, 32.0, 2, chunk_len=15)
    assert [dominant(f) for f in frames] == ["green", "blue"]
    write_chunks(tmp_path / "idx", [RED, GREEN], names=["0000.mp4", "0001.mp4"])
    assert find_chunk_layout(tmp_path / "idx", 15) == ("index", (0, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_is_read_from_the_file(tmp_path, backend):
    fps = 8.0
    write_video(tmp_path / "v.mp4", solid(RED, 40, ramp=True), fps, crf=0)  # 5 s, green = 5 * frame number
    frames = load_frames(tmp_path / "v.mp4", 2, start=1.0, end=3.0, backend=backend)
    # seconds 1..3 at 8 fps = frames 8..24 -> midpoints 12 and 20
    assert [int(round(f[..., 1].mean() / 5)) for f in frames] == [12, 20]


@pytest.mark.parametrize("backend", BACKENDS)
def test_indices_clamp_to_short_last_chunk(tmp_path, backend):
    # a 15-s chunk with 149 instead of 150 frames (like 449-frame chunks of 29.97-fps video), and a clip reaching
    # past the end of the video
    write_chunks(tmp_path / "vid", [RED, BLUE], last_frames=149)
    frames = load_clip(tmp_path, "vid", 25.0, 31.0, 4, chunk_len=15, backend=backend)
    assert [dominant(f) for f in frames] == ["blue"] * 4


def test_whole_video_mode_samples_uniformly(tmp_path):
    write_video(tmp_path / "q1.mp4", solid(RED, 48, ramp=True), 10.0, crf=0)
    frames = load_clip(tmp_path, "q1", 0.0, None, 4, chunk_len=0)
    assert [int(round(f[..., 1].mean() / 5)) for f in frames] == [6, 18, 30, 42]


def test_single_file_layouts_including_participant_folder(tmp_path):
    write_video(tmp_path / "P01" / "P01_01.MP4", solid(BLUE, 30), 10.0)
    frames = load_clip(tmp_path, "P01_01", 0.5, 2.5, 2, chunk_len=0)
    assert [dominant(f) for f in frames] == ["blue", "blue"]


def test_backends_agree(tmp_path):
    if not decord_available():
        pytest.skip("decord not installed")
    write_chunks(tmp_path / "vid", [RED, BLUE])
    a = load_clip(tmp_path, "vid", 10.0, 20.0, 6, backend="decord")
    b = load_clip(tmp_path, "vid", 10.0, 20.0, 6, backend="pyav")
    assert np.array_equal(a, b)


def _bad_files(root: Path) -> dict[str, Path]:
    write_chunks(root / "good", [RED])
    good = (root / "good" / "0000.mp4").read_bytes()
    paths = {}
    for name, data in {"empty": b"", "truncated": good[: len(good) // 3], "corrupt": os.urandom(20000)}.items():
        (root / name).mkdir()
        (root / name / "0000.mp4").write_bytes(data)
        paths[name] = root / name / "0000.mp4"
    paths["missing"] = root / "missing"
    return paths


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_bad_files_raise_an_error_naming_the_path(tmp_path, backend):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(VideoDecodeError) as info:
            load_clip(tmp_path, name, 1.0, 3.0, 2, backend=backend)
        assert str(path) in str(info.value) and info.value.path == str(path)


def test_missing_middle_chunk_is_an_error(tmp_path):
    write_chunks(tmp_path / "vid", [RED, GREEN, BLUE])
    (tmp_path / "vid" / "0001.mp4").unlink()
    with pytest.raises(VideoDecodeError, match="0001.mp4"):
        load_clip(tmp_path, "vid", 10.0, 35.0, 8)


def test_train_crop_is_one_draw_per_clip():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (1, 60, 80, 3), dtype=np.uint8)
    clip = np.repeat(frame, 6, axis=0)
    tf = VideoTransform(32, is_training=True)
    torch.manual_seed(0)
    out = tf(clip)
    assert out.shape == (3, 6, 32, 32) and out.dtype == torch.float32
    for t in range(1, 6):
        assert torch.equal(out[:, t], out[:, 0])
    outs = [tf(clip) for _ in range(5)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_eval_crop_is_centre_square_and_normalised():
    clip = np.zeros((2, 40, 80, 3), np.uint8)
    clip[:, :, 20:60] = 200  # the centre square is bright, the sides are dark
    out = VideoTransform(20, is_training=False, norm="openai")(clip)
    mean, std = NORMALIZATION["openai"]
    expected = (200 - torch.tensor(mean)) / torch.tensor(std)
    assert out.shape == (3, 2, 20, 20)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), expected, atol=1e-4)


def test_uint8_output_normalised_on_device_matches_float():
    clip = np.random.default_rng(1).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    f = VideoTransform(32, norm="lavila")(clip)
    u = VideoTransform(32, norm="lavila", output="uint8")(clip)
    assert u.dtype == torch.uint8 and u.is_contiguous() and f.is_contiguous()
    assert torch.equal(NormalizeVideo("lavila")(u[None])[0], f)  # the same arithmetic on CPU
    mean, std = NORMALIZATION["lavila"]
    expected = (u.double() - torch.tensor(mean, dtype=torch.float64).view(3, 1, 1, 1)) / \
        torch.tensor(std, dtype=torch.float64).view(3, 1, 1, 1)
    assert torch.allclose(f.double(), expected, atol=1e-5)
    assert torch.allclose(NormalizeVideo("lavila")(u.float()), f, atol=1e-6)  # float input


@pytest.mark.parametrize("training", [True, False])
def test_crop_resize_is_torchvision_resized_crop_on_uint8(training):
    """The crop is cut from the uint8 frames and only the crop is resized (bilinear, antialiased), as torchvision's
    resized_crop does on a uint8 (T, 3, H, W) clip, then normalised."""
    from torchvision.transforms.v2 import functional as TF

    clip = np.random.default_rng(2).integers(0, 255, (5, 60, 90, 3), dtype=np.uint8)
    tf = VideoTransform(40, is_training=training, norm="openai", output="uint8")
    top, left, h, w = tf.crop_box(60, 90, torch.Generator().manual_seed(3))
    out = tf(clip, torch.Generator().manual_seed(3))
    ref = TF.resized_crop(torch.from_numpy(clip).permute(0, 3, 1, 2), top, left, h, w, [40, 40], antialias=True)
    assert out.shape == (3, 5, 40, 40)
    assert torch.equal(out, ref.transpose(0, 1))
    assert torch.equal(VideoTransform(40, is_training=training, norm="openai")(clip, torch.Generator().manual_seed(3)),
                       NormalizeVideo("openai")(out))


def test_crop_of_the_output_size_is_cut_without_resizing():
    clip = np.random.default_rng(4).integers(0, 255, (2, 30, 50, 3), dtype=np.uint8)
    out = VideoTransform(30, is_training=False, output="uint8")(clip)
    assert torch.equal(out, torch.from_numpy(clip[:, :, 10:40]).permute(3, 0, 1, 2))


def test_decord_frames_outlive_their_reader(tmp_path):
    """decord's frames are a zero-copy view of its output buffer: they must stay valid after the reader is gone."""
    if not decord_available():
        pytest.skip("decord not installed")
    import gc

    write_video(tmp_path / "v.mp4", solid(RED, 20, ramp=True), 10.0)
    frames = load_frames(tmp_path / "v.mp4", 4, backend="decord")
    gc.collect()
    _ = [np.ones((64, 64, 3), np.uint8) for _ in range(100)]  # reuse freed memory, if any was freed
    assert frames.dtype == np.uint8 and frames.shape == (4, 32, 64, 3)
    assert np.array_equal(frames, load_frames(tmp_path / "v.mp4", 4, backend="pyav"))
    assert [dominant(f) for f in frames] == ["red"] * 4 and list(frames[:, 0, 0, 1]) == sorted(frames[:, 0, 0, 1])


def test_normalisation_constants():
    assert get_normalization("clip") == NORMALIZATION["openai"]
    assert NORMALIZATION["lavila"][0][0] == pytest.approx(108.3272985)  # LaViLa's red-mean quirk
    assert NORMALIZATION["openai"][0][0] == pytest.approx(0.48145466 * 255, abs=1e-4)
    assert NORMALIZATION["timm"][1][2] == pytest.approx(0.225 * 255)
    with pytest.raises(ValueError, match="unknown normalisation"):
        get_normalization("bogus")
