"""Data-path benchmark (issue 9, target 3): training loader clips/s vs raw decord decoding of the same frames.

Both sides read generated 15-s 320p chunks (568x320, 30 fps, H.264) through a DataLoader with the same number of
workers and batch size:

* baseline — a bare Dataset that opens each needed chunk with ``decord.VideoReader`` and returns
  ``get_batch(frame ids)`` as uint8 (T, H, W, 3) (no crop, no normalisation, no text);
* ours — ``Ego4DPretrainDataset`` in training mode: chunk-layout detection, jittered segment sampling, decord with
  PyAV fallback, one RandomResizedCrop per clip to 224, normalisation, tokenisation, skip-and-count collate.
  Reported for float32 output (the default) and for uint8 output (normalisation moved to the device).

Target: ours >= 0.9 x baseline clips/s. Standalone: ``python benchmarks/bench_data.py [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lavila.data.ego4d import Ego4DPretrainDataset  # noqa: E402
from lavila.data.loader import build_loader  # noqa: E402
from lavila.data.synthetic import make_timeline, write_chunked_video  # noqa: E402
from lavila.data.video import get_frame_ids  # noqa: E402

TARGET = 0.9
HEIGHT, WIDTH, FPS, CHUNK = 320, 568, 30.0, 15.0


def make_data(num_videos: int, clips_per_video: int, seed: int = 0) -> Path:
    """Chunked 320p videos + an Ego4D-style metadata pickle, cached in the temp folder between runs."""
    root = Path(tempfile.gettempdir()) / f"lavila_bench_data_v1_{num_videos}_{clips_per_video}_{seed}"
    if (root / "meta.pkl").is_file():
        return root
    rng = np.random.default_rng(seed)
    items = []
    for v in range(num_videos):
        vid = f"video{v:03d}"
        actions = make_timeline(rng, 2 * CHUNK, ["take", "put", "pull", "move"], ["cup", "plate", "bowl", "knife"],
                                2.0, 4.0)
        write_chunked_video(root / "videos" / vid, actions, 2 * CHUNK, CHUNK, FPS, HEIGHT, WIDTH, seed + v)
        for _ in range(clips_per_video):  # ~2-s clips anywhere in the 30 s, some across the 15-s boundary
            start = float(rng.uniform(0, 2 * CHUNK - 2.2))
            items.append((vid, start, start + float(rng.uniform(1.0, 2.0)), "#C C takes the cup"))
    with open(root / "meta.pkl", "wb") as f:
        pickle.dump(items, f)
    return root


class RawDecordClips(Dataset):
    """Baseline: the same frame ids, decoded with plain decord, one reader per chunk, nothing else."""

    def __init__(self, root: Path, items: list, num_frames: int) -> None:
        self.root, self.items, self.num_frames = root, items, num_frames

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        import decord

        vid, start, end, _ = self.items[index]
        per_chunk = int(CHUNK * FPS)
        ids = get_frame_ids(round(start * FPS), round(end * FPS), self.num_frames)
        parts = []
        for chunk in sorted({i // per_chunk for i in ids}):
            vr = decord.VideoReader(str(self.root / "videos" / vid / f"{chunk:04d}.mp4"), num_threads=1)
            local = [min(i - chunk * per_chunk, len(vr) - 1) for i in ids if i // per_chunk == chunk]
            parts.append(vr.get_batch(local).asnumpy())
        return torch.from_numpy(np.concatenate(parts))


def _clips_per_second(loader: DataLoader) -> float:
    """Clips/s after the first batch (worker start-up excluded on both sides)."""
    it = iter(loader)
    first = next(it)
    count, tic = 0, time.perf_counter()
    for batch in it:
        count += len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)
    elapsed = time.perf_counter() - tic
    del first
    return count / elapsed


def measure(quick: bool, workers: int = 2, batch_size: int = 4, num_frames: int = 8, crop: int = 224,
            repeats: int | None = None) -> dict[str, float]:
    root = make_data(num_videos=2 if quick else 4, clips_per_video=20 if quick else 24)
    items = pickle.load(open(root / "meta.pkl", "rb"))
    repeats = repeats or (3 if quick else 5)
    torch.set_num_threads(1)
    baseline_ds = RawDecordClips(root, items, num_frames)
    ours = {out: Ego4DPretrainDataset(root / "videos", root / "meta.pkl", num_frames=num_frames, crop_size=crop,
                                      is_training=True, output=out) for out in ("float", "uint8")}
    results: dict[str, list[float]] = {"baseline": [], "float": [], "uint8": []}
    for _ in range(repeats):  # interleaved so machine load affects both sides alike
        results["baseline"].append(_clips_per_second(DataLoader(baseline_ds, batch_size=batch_size,
                                                                num_workers=workers, shuffle=True)))
        for out, ds in ours.items():
            results[out].append(_clips_per_second(build_loader(ds, batch_size=batch_size, num_workers=workers,
                                                               shuffle=True)))
    return {k: statistics.median(v) for k, v in results.items()} | {"clips": len(items), "repeats": repeats,
                                                                     "workers": workers, "frames": num_frames}


def run(quick: bool = True) -> list[dict]:
    """Rows for benchmarks/run_all.py: name, baseline, ours, ratio, target, passed, unit."""
    m = measure(quick)
    notes = (f"median of {m['repeats']} interleaved runs, {m['clips']} clips of {m['frames']} frames from 15-s "
             f"568x320 30-fps H.264 chunks, batch 4, {m['workers']} workers")
    ratio = m["float"] / m["baseline"]
    rows = [{"name": f"data loader {m['frames']}f 224px (float32 normalised) vs raw decord",
             "baseline": round(m["baseline"], 2), "ours": round(m["float"], 2), "ratio": round(ratio, 3),
             "target": TARGET, "passed": bool(ratio >= TARGET), "unit": "clips/s", "notes": notes}]
    rows.append({"name": f"data loader {m['frames']}f 224px (uint8, normalise on device) vs raw decord",
                 "baseline": round(m["baseline"], 2), "ours": round(m["uint8"], 2),
                 "ratio": round(m["uint8"] / m["baseline"], 3), "target": "info", "passed": None, "unit": "clips/s",
                 "notes": "informational: output='uint8' + NormalizeVideo on the device"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = run(args.quick)
    for r in rows:
        print(f"{r['name']}: raw decord {r['baseline']:.2f} clips/s, ours {r['ours']:.2f} clips/s, "
              f"ratio {r['ratio']:.3f} (target {r['target']}) "
              f"{'-' if r['passed'] is None else 'PASS' if r['passed'] else 'FAIL'}")
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
