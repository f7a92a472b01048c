"""The compiled layout / normalisation kernels give exactly the NumPy / PyTorch path's values."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lavila.data import layout_kernel
from lavila.data.transforms import NormalizeVideo, VideoTransform, _to_cthw

pytestmark = pytest.mark.skipif(layout_kernel.load_kernel() is None, reason="no C compiler: the kernel cannot be "
                                "built here (the NumPy / PyTorch path is tested by the transform tests)")


def _frames(seed: int = 0, shape=(4, 40, 70, 3)) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _reference(crop: torch.Tensor, norm: NormalizeVideo | None) -> torch.Tensor:
    if norm is None:
        return _to_cthw(crop)
    return _to_cthw(crop, np.float32).mul_(norm.scale).add_(norm.shift)


@pytest.mark.parametrize("norm_name", [None, "openai", "lavila"])
def test_planar_clip_matches_numpy_path_on_views_and_resized_crops(norm_name):
    norm = None if norm_name is None else NormalizeVideo(norm_name)
    consts = () if norm is None else (norm.scale, norm.shift)
    frames = _frames()
    view = frames[:, 3:31, 5:44].permute(0, 3, 1, 2)  # a crop of decoded frames: strided, interleaved pixels
    resized = F.interpolate(view.contiguous(memory_format=torch.channels_last), size=(24, 24), mode="bilinear",
                            antialias=True)
    for crop in (view, resized):
        got = layout_kernel.planar_clip(crop, *consts)
        want = _reference(crop, norm)
        assert got.dtype == want.dtype and got.shape == want.shape == (3, 4) + tuple(crop.shape[2:])
        assert torch.equal(got, want)  # bit-identical, not just close


def test_planar_clip_declines_inputs_it_does_not_handle():
    frames = _frames()
    assert layout_kernel.planar_clip(frames.permute(0, 3, 1, 2).contiguous()) is None  # planar memory
    assert layout_kernel.planar_clip(frames.permute(0, 3, 1, 2).float()) is None  # not uint8
    assert layout_kernel.planar_clip(frames) is None  # channels last, not (T, 3, H, W)


@pytest.mark.parametrize("shape", [(3, 4, 16, 16), (2, 3, 4, 16, 16)])
def test_normalize_planes_matches_torch_arithmetic(shape):
    norm = NormalizeVideo("openai")
    video = _frames(1, shape)
    want = video.float().mul_(norm.scale).add_(norm.shift)
    assert torch.equal(layout_kernel.normalize_planes(video, norm.scale, norm.shift), want)
    assert torch.equal(norm(video), want)


def test_normalize_planes_threaded_split_is_exact(monkeypatch):
    monkeypatch.setattr(layout_kernel, "_PARALLEL_MIN", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        norm = NormalizeVideo("timm")
        video = _frames(2, (3, 3, 2, 8, 8))  # 9 planes over 2 threads
        assert torch.equal(layout_kernel.normalize_planes(video, norm.scale, norm.shift),
                           video.float().mul_(norm.scale).add_(norm.shift))
    finally:
        torch.set_num_threads(threads)


def test_normalize_planes_declines_non_contiguous_and_wrong_channel_count():
    norm = NormalizeVideo("openai")
    video = _frames(3, (2, 3, 4, 8, 8))
    assert layout_kernel.normalize_planes(video.transpose(3, 4), norm.scale, norm.shift) is None
    assert layout_kernel.normalize_planes(_frames(3, (2, 4, 4, 8, 8)), norm.scale, norm.shift) is None
    assert torch.equal(norm(video.transpose(3, 4)), video.transpose(3, 4).float().mul_(norm.scale).add_(norm.shift))


@pytest.mark.parametrize("output", ["float", "uint8"])
@pytest.mark.parametrize("training", [True, False])
def test_video_transform_same_output_without_the_kernel(monkeypatch, output, training):
    frames = _frames(4, (3, 48, 80, 3))
    tf = VideoTransform(32, is_training=training, output=output)
    with_kernel = tf(frames, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(layout_kernel, "load_kernel", lambda: None)
    assert layout_kernel.planar_clip(frames.permute(0, 3, 1, 2)) is None
    without = tf(frames, generator=torch.Generator().manual_seed(0))
    assert with_kernel.dtype == without.dtype and torch.equal(with_kernel, without)
