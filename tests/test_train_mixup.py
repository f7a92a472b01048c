"""Mixup / CutMix on (B, C, T, H, W): boxes over H x W in every frame, lambda from the pasted box area."""
from __future__ import annotations

import pytest
import torch

from lavila.train.mixup import VideoMixup, one_hot_smoothed


def _batch(b=4, t=4, h=16, w=24):
    # every sample is constant = its index, so pasted regions are easy to see
    return torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1, 1).expand(b, 3, t, h, w).clone()


def test_cutmix_box_is_in_h_w_of_every_frame_and_lambda_from_area():
    torch.manual_seed(3)
    mix = VideoMixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=4)
    for _ in range(20):
        video, target = mix(_batch(), torch.arange(4))
        y0, y1, x0, x1 = mix.last["box"]
        area = (y1 - y0) * (x1 - x0)
        assert mix.last["cutmix"] and mix.last["lam"] == pytest.approx(1 - area / (16 * 24))
        pasted = video[0] == 3.0  # sample 0 receives sample 3 (flipped batch)
        assert int(pasted.sum()) == 3 * 4 * area  # same box in all channels and all T frames
        assert pasted[:, :, y0:y1, x0:x1].all()
        assert (pasted.float().sum(dim=(0, 2, 3)) == 3 * area).all()  # every frame cut: not along T
        assert target[0, 0] == pytest.approx(mix.last["lam"]) and target[0, 3] == pytest.approx(1 - mix.last["lam"])
        assert torch.allclose(target.sum(1), torch.ones(4))


def test_mixup_blends_whole_clips():
    torch.manual_seed(0)
    mix = VideoMixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=4)
    video, target = mix(_batch(), torch.arange(4))
    lam = mix.last["lam"]
    assert not mix.last["cutmix"]
    assert torch.allclose(video[0], torch.full_like(video[0], 3 * (1 - lam)))
    expected = one_hot_smoothed(torch.arange(4), 4, 0.1)
    assert torch.allclose(target, lam * expected + (1 - lam) * expected.flip(0))


def test_prob_zero_only_smooths_and_bad_input():
    mix = VideoMixup(prob=0.0, label_smoothing=0.1, num_classes=3)
    video, target = mix(_batch(b=2), torch.tensor([0, 2]))
    assert torch.equal(video, _batch(b=2)) and target[0, 0] == pytest.approx(0.9 + 0.1 / 3)
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        mix(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch"):
        VideoMixup(mode="pair")


def test_reference_cutmix_variant_cuts_t_by_h_like_timm_on_video():
    """--cutmix-variant reference: timm's image CutMix on (B, C, T, H, W) -- the H x W box is pasted as
    x[:, :, y0:y1, x0:x1], i.e. over frames [y0, y1) and rows [x0, x1), full width; lambda from the H x W box."""
    t, h, w = 8, 16, 24
    torch.manual_seed(5)
    mix = VideoMixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=4, cutmix_variant="reference")
    seen_empty = False
    for _ in range(40):
        video, target = mix(_batch(t=t, h=h, w=w), torch.arange(4))
        y0, y1, x0, x1 = mix.last["box"]
        assert mix.last["lam"] == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (h * w))  # as if an H x W box
        expected = torch.zeros(3, t, h, w, dtype=torch.bool)
        expected[:, y0:y1, x0:x1, :] = True  # frames from the box rows, image rows from the box columns
        assert torch.equal(video[0] == 3.0, expected)
        assert target[0, 3] == pytest.approx(1 - mix.last["lam"])  # targets mixed even when nothing was pasted
        seen_empty |= y0 >= t
    assert seen_empty  # boxes starting past the last frame paste nothing
    with pytest.raises(ValueError, match="--cutmix-variant"):
        VideoMixup(cutmix_variant="tw")
