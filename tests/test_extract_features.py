"""Feature extraction (lavila/evaluation/features.py, feature_store.py, lavila/extract.py, extract_features.py):
windows against the evaluation path, outputs, resume after SIGKILL, torchrun == one process, flat memory."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lavila.data.synthetic_video import write_video
from lavila.data.transforms import VideoTransform
from lavila.data.video import load_clip
from lavila.evaluation import feature_store as store
from lavila.evaluation.features import WindowEncoder, WindowSpec, extract_video, window_count
from lavila.extract import list_videos, load_model, main

REPO = Path(__file__).resolve().parent.parent
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2,
        "project_embed_dim": 16, "img_size": 32, "context_length": 16}
LENGTHS = {"a": 75, "b": 40, "c": 9}  # frames at 30 fps; c is shorter than one window


def _frames(n: int, seed: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w, 3)).astype(np.int16)
    return [np.clip(base + rng.integers(-40, 40, (h, w, 3)) + 3 * i, 0, 255).astype(np.uint8) for i in range(n)]



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extract_videos")
    for seed, (name, n) in enumerate(LENGTHS.items()):
        write_video(root / f"{name}.mp4", _frames(n, seed), fps=30)
    # a chunked video (1-s chunks): the second chunk is 20 frames long
    frames = _frames(50, 7)
    write_video(root / "d" / "0000.mp4", frames[:30], fps=30)
    write_video(root / "d" / "0001.mp4", frames[30:], fps=30)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from lavila.models import create_model
    from lavila.utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("CLIP_TimeSformerB16", num_frames=4, **TINY)
    path = tmp_path_factory.mktemp("extract_ckpt") / "tiny.pt"
    save_checkpoint({"state_dict": model.state_dict(), "model_name": "CLIP_TimeSformerB16",
                     "model_config": dict(model.config), "args": {"norm_style": "openai"}}, path)
    return path


def _argv(input_dir: Path, out: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["--model", str(checkpoint), "--input", str(input_dir), "--output-dir", str(out), "--window", "16",
            "--stride", "8", "--chunk-len", "1", "--device", "cpu", "--batch-size", "4", *extra]


def test_every_window_equals_the_evaluation_path(videos, checkpoint):
    model, info = load_model(str(checkpoint))
    transform = VideoTransform(info["crop"], norm=info["norm"])
    spec = WindowSpec(16, 8, info["num_frames"])
    encoder = WindowEncoder(model, "proj")
    for name, chunk_len, frames in [("a", 0, 75), ("c", 0, 9), ("d", 1.0, 50)]:
        source = videos / name if chunk_len else videos / f"{name}.mp4"
        out = extract_video(source, spec, transform, encoder, batch_size=3, chunk_len=chunk_len)
        assert len(out["features"]) == window_count(frames, 16, 8) == len(out["start_s"])
        assert out["end_s"][-1] == pytest.approx(frames / 30) and out["start_s"][0] == 0
        with torch.no_grad():
            for k, (s, e) in enumerate(zip(out["start_s"], out["end_s"])):
                clip = transform(load_clip(videos, name, s, e, info["num_frames"], chunk_len=chunk_len))
                ref = model.encode_video(clip[None])[0]
                torch.testing.assert_close(out["features"][k], ref, atol=1e-5, rtol=0)
        assert out["peak_frames"] <= 16 + 1  # about one window of frames held, whatever the length


def test_resampled_windows_and_other_kinds(videos, checkpoint):
    model, info = load_model(str(checkpoint), clip_length=2)
    assert info["num_frames"] == 2
    transform = VideoTransform(info["crop"], norm=info["norm"])
    out = extract_video(videos / "a.mp4", WindowSpec(4, 2, 2, fps=10.0), transform, WindowEncoder(model), 8)
    assert len(out["features"]) == window_count(25, 4, 2) and out["fps"] == 10.0  # 75 frames at 30 -> 25 at 10
    spec = WindowSpec(16, 16, 2)
    pooled = extract_video(videos / "b.mp4", spec, transform, WindowEncoder(model, "pooled"), 8)["features"]
    proj = extract_video(videos / "b.mp4", spec, transform, WindowEncoder(model, "proj", normalize=False), 8)
    torch.testing.assert_close(pooled @ model.visual.image_projection.detach(), proj["features"], atol=1e-5, rtol=0)
    tokens = extract_video(videos / "b.mp4", spec, transform, WindowEncoder(model, "tokens"), 8)["features"]
    assert tokens.shape == (3, 2, 2, 2, 32)  # windows, frames, grid 32/16 x 32/16, width
    # the CLS token after the final norm is the pooled output: the token maps come from the same forward pass
    assert not torch.allclose(tokens[:, 0, 0, 0], pooled)


def test_cli_outputs_index_text_and_bad_videos(videos, checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.mp4", "c.mp4"):
        os.symlink(videos / name, inputs / name)
    os.symlink(videos / "d", inputs / "d")
    (inputs / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "q.txt").write_text("open the fridge\n\ncut the tomato\n")
    out = tmp_path / "out"
    assert main(_argv(inputs, out, checkpoint, "--text", str(tmp_path / "q.txt"), "--format", "npy")) == 0
    index = (out / "index.csv").read_text().splitlines()
    assert index[0] == "video,window,start_s,end_s"
    assert len(index) - 1 == window_count(75, 16, 8) + window_count(9, 16, 8) + window_count(50, 16, 8)
    assert index[1] == "a,0,0.000000,0.533333"
    assert np.load(out / "features" / "d.npy").shape == (window_count(50, 16, 8), 16)
    bad = (out / "bad_videos.csv").read_text().splitlines()
    assert len(bad) == 2 and bad[1].startswith("broken,") and "cannot decode" in bad[1]
    texts, emb = store.load_text_features(out)
    assert texts == ["open the fridge", "cut the tomato"] and emb.shape == (2, 16)
    # a relaunch with other settings is refused, naming the difference
    assert main(_argv(inputs, out, checkpoint, "--stride", "4", "--format", "npy")) == 1


def test_list_file_and_duplicate_names(videos, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my videos\n{videos / 'b.mp4'}\n{videos / 'd'}\n")
    found = list_videos(listing, chunk_len=1.0)
    assert [(v.name, v.chunk_len) for v in found] == [("b", 0.0), ("d", 1.0)]
    listing.write_text(f"{videos / 'b.mp4'}\n{videos / 'b.mp4'}\n")
    with pytest.raises(ValueError, match="two videos named 'b'"):
        list_videos(listing)
    assert [v.name for v in list_videos(videos, chunk_len=1.0)] == ["a", "b", "c", "d"]


def _outputs(out: Path) -> dict[str, object]:
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != "summary.json":
            rel = str(path.relative_to(out))
            files[rel] = torch.load(path)["features"] if path.suffix == ".pt" else path.read_bytes()
    return files


def _assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
        else:
            assert a[key] == b[key], key


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_relaunch_skips_finished_videos(videos, checkpoint, tmp_path):
    out = tmp_path / "out"
    assert main(_argv(videos, out, checkpoint)) == 0
    first = _outputs(out)
    stamps = {v: store.feature_path(out, v).stat().st_mtime_ns for v in ("a", "b", "d")}
    store.sidecar_path(out, "c").unlink()  # as if the run had died while writing c
    assert main(_argv(videos, out, checkpoint)) == 0
    assert {v: store.feature_path(out, v).stat().st_mtime_ns for v in ("a", "b", "d")} == stamps
    _assert_same(_outputs(out), first)


@pytest.mark.slow
def test_sigkill_and_relaunch_finishes_without_recomputing(videos, checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        os.symlink(videos / "b.mp4", inputs / f"v{i}.mp4")
    reference = tmp_path / "reference"
    assert main(_argv(inputs, reference, checkpoint)) == 0
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "extract_features.py"), *_argv(inputs, out, checkpoint)]
    # each atomic write pauses 0.4 s before its rename: the kill lands in the middle of the run
    proc = subprocess.Popen(cmd, env={**_env(), "LAVILA_FAULT_SAVE_SLEEP": "0.4"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "windows" / "v0.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first video was done"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [v for v in ("v0", "v1", "v2", "v3") if store.is_done(out, v)]
    assert 1 <= len(done) < 4
    stamps = {v: (store.feature_path(out, v).stat().st_mtime_ns, store.sidecar_path(out, v).stat().st_mtime_ns)
              for v in done}
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for v in done:  # not recomputed
        assert (store.feature_path(out, v).stat().st_mtime_ns, store.sidecar_path(out, v).stat().st_mtime_ns) \
            == stamps[v]
    assert not list(out.rglob("*.tmp"))
    _assert_same(_outputs(out), _outputs(reference))


@pytest.mark.slow
def test_two_processes_equal_one(videos, checkpoint, tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    assert main(_argv(videos, single, checkpoint)) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29631",
           str(REPO / "extract_features.py"), *_argv(videos, double, checkpoint)]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same(_outputs(double), _outputs(single))
    assert json.loads((double / "extract_config.json").read_text())["window"] == 16


@pytest.mark.slow
def test_peak_memory_flat_in_video_length(checkpoint, tmp_path):
    # 10 fps, 320x240: a 10-minute video held whole would take ~0.7 GB as decoded YUV frames, ~1.4 GB as RGB
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    for name, seconds in (("short", 60), ("long", 600)):
        write_video(tmp_path / name / f"{name}.mp4", (np.roll(base, i, axis=1) for i in range(seconds * 10)),
                    fps=10, crf=35)
    peaks = {}
    for name in ("short", "long"):
        out = tmp_path / f"out_{name}"
        cmd = [sys.executable, str(REPO / "extract_features.py"), "--model", str(checkpoint), "--input",
               str(tmp_path / name), "--output-dir", str(out), "--window", "16", "--stride", "16", "--clip-length",
               "2", "--device", "cpu", "--batch-size", "16"]
        result = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        peaks[name] = json.loads((out / "summary.json").read_text())["peak_rss_mb"]
        frames = {"short": 600, "long": 6000}[name]
        assert len((out / "index.csv").read_text().splitlines()) - 1 == window_count(frames, 16, 16)
    print(f"peak RSS: 1-min video {peaks['short']:.0f} MB, 10-min video {peaks['long']:.0f} MB")
    assert peaks["long"] <= 1.5 * peaks["short"], peaks


@pytest.mark.parametrize("name", ["CLIP_VITT16", "CLIP_ViViM_tiny", "CLIP_TimeMamba_like_timesformer"])
def test_token_maps_put_each_patch_in_its_place(name):
    from lavila.evaluation.features import token_maps
    from lavila.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_frames=2, **TINY).eval()
    with torch.no_grad():
        for key, param in model.visual.named_parameters():  # residual blocks -> identity: no mixing of tokens
            if key.endswith(("out_proj.weight", "out_proj.bias", "fc2.weight", "fc2.bias")):
                param.zero_()
        video = torch.randn(2, 3, 2, 32, 32)
        tokens = token_maps(model.visual, video)
        assert tokens.shape == (2, 2, 2, 2, model.visual.forward_features(video).shape[-1])
        changed = video.clone()
        changed[0, :, 1, :16, 16:] += 1.0  # clip 0, frame 1, patch row 0, column 1
        diff = (token_maps(model.visual, changed) - tokens).abs().amax(dim=-1)
    assert diff[0, 1, 0, 1] > 1e-3
    diff[0, 1, 0, 1] = 0
    assert diff.max() < 1e-5
