"""Feature extraction throughput (issue 20): dense windows/s of ``extract_features.py``'s streaming path against the
evaluation loop's clips/s on the same windows, same model, same frames, in the same run.

Input: one generated 568x320 30-fps H.264 video (the size of the EK100 chunks; 10 s, 6 s with ``--quick``), a tiny
TimeSformer CLIP (64 px, 8 frames). Windows: 8 frames at stride 4 (stride = window / 2: each frame in two windows).

* baseline — the evaluation loop: a ``ClipDataset`` of the windows' ``[start_s, end_s]`` clips (each decoded on its
  own, PyAV seeking / decord as the evaluation does), ``zeroshot.sharded_loader`` + ``zeroshot.collect`` with
  ``encode_video``, batch 16, no workers;
* ours — ``lavila.evaluation.features.extract_video`` (frames decoded once in one forward pass, each transformed
  once, shared by the overlapping windows), batch 16.

Both give the same embeddings (the largest difference is in the notes). Target: ours >= 1.0x. Standalone:
``python benchmarks/bench_extract.py [--quick]``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine_info, make_row, median_seconds  # noqa: E402

from lavila.data.clips import ClipDataset  # noqa: E402
from lavila.data.synthetic_video import write_video  # noqa: E402
from lavila.data.transforms import VideoTransform  # noqa: E402
from lavila.evaluation import zeroshot  # noqa: E402
from lavila.evaluation.features import WindowEncoder, WindowSpec, extract_video  # noqa: E402
from lavila.models import create_model  # noqa: E402

TARGET = 1.0
WINDOW, STRIDE, FRAMES, CROP, BATCH = 8, 4, 8, 64, 16
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2,
        "project_embed_dim": 32, "img_size": CROP, "num_frames": FRAMES}


class WindowClips(ClipDataset):
    """The windows as evaluation clips of one single-file video."""

    def __init__(self, root: Path, video: str, spans: list[tuple[float, float]]) -> None:
        super().__init__(root, num_frames=FRAMES, chunk_len=0, crop_size=CROP, is_training=False)
        self.video, self.spans = video, spans

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> tuple[torch.Tensor]:
        start, end = self.spans[i]
        return (self.load_video_clip(self.video, start, end),)


def _make_video(path: Path, seconds: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (320, 568, 3), dtype=np.uint8)
    write_video(path, (np.roll(base, 3 * i, axis=1) for i in range(30 * seconds)), fps=30)


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = create_model("CLIP_TimeSformerB16", **TINY).eval()
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _make_video(root / "v.mp4", 6 if quick else 10)
        transform = VideoTransform(CROP, norm="openai")
        encoder = WindowEncoder(model, "proj")
        spec = WindowSpec(WINDOW, STRIDE, FRAMES)
        ours = {}

        def extract() -> None:
            ours.update(extract_video(root / "v.mp4", spec, transform, encoder, batch_size=BATCH))

        ours_s, _ = median_seconds(extract, repeats=repeats)
        spans = list(zip(ours["start_s"].tolist(), ours["end_s"].tolist()))
        dataset = WindowClips(root, "v", spans)
        baseline = {}

        def evaluate() -> None:
            loader = zeroshot.sharded_loader(dataset, BATCH)
            step = lambda batch: (model.encode_video(batch[0]).float(),)  # noqa: E731
            empty = (torch.zeros(0, TINY["project_embed_dim"]),)
            baseline["video"] = zeroshot.collect(loader, step, len(dataset), empty)[0]

        base_s, _ = median_seconds(evaluate, repeats=repeats)
    n = len(spans)
    diff = float((baseline["video"] - ours["features"]).abs().max())
    name = f"extraction, {n} windows of {WINDOW} frames at stride {STRIDE}, 568x320 -> {CROP} px, tiny TimeSformer"
    return [make_row(name, n / base_s, n / ours_s, "windows/s", TARGET, higher_is_better=True,
                     notes=f"baseline: evaluation loop (ClipDataset + collect); max |diff| {diff:.1e}")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter video, one repeat")
    args = parser.parse_args(argv)
    print(machine_info())
    print(format_table(run(args.quick)))


if __name__ == "__main__":
    main()
