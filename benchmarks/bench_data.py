"""Data-path benchmark (issue 9, target 3): training loader clips/s vs raw decord decoding of the same frames.

Both sides read generated 15-s 320p chunks (568x320, 30 fps, H.264) through a DataLoader with the same number of
workers, batch size, sampler order and per-sample seeds, and decode the same frames:

* baseline — a bare Dataset that opens each needed chunk with ``decord.VideoReader`` (one reader per chunk per
  clip) and returns ``get_batch(frame ids)`` as uint8 (T, H, W, 3) (no crop, no normalisation, no text, no
  per-sample RNG save/restore). Its frame ids are ours: the jittered segment sampling drawn from a generator seeded
  with the engine's per-sample seed (checked at start-up);
* ours — the pretraining engine's training loader exactly as ``main_pretrain.py`` builds it (its flags and their
  defaults, ``PretrainEngine.build_datasets`` and ``lavila.train.loop.build_loader``: per-sample seeding, resumable
  sampler, skip-and-count collate): chunk-layout detection, decord with PyAV fallback, one RandomResizedCrop per
  clip to 224 on uint8 frames, tokenisation; the clips leave the workers as uint8 and each batch is normalised by
  the engines' ``video_to_device`` (here on CPU, in the consuming process, and timed). Also reported, for
  information, with the datasets' float32 output (normalised in the workers).

Ours includes what the engines' loader does in its worker processes, e.g. the allocator tuning of
``lavila.data.loader.tune_worker_allocator`` (``LAVILA_WORKER_MALLOC=0`` measures without it); the baseline's
workers run untouched.

Target: ours >= 0.9 x baseline clips/s (medians of interleaved runs after one warm-up round). ``--stages`` prints
where one process spends its CPU time per clip instead; ``--fused-decode-crop`` measures the engines' other resize
path. Standalone:
``python benchmarks/bench_data.py [--quick] [--stages] [--fused-decode-crop]``.
"""
from __future__ import annotations

import argparse
import collections
import functools
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

from lavila.data import video as video_mod  # noqa: E402
from lavila.data import video_readers  # noqa: E402
from lavila.data.synthetic_video import make_timeline, write_chunked_video  # noqa: E402
from lavila.data.transforms import random_resized_crop_params  # noqa: E402
from lavila.data.video import get_frame_ids  # noqa: E402
from lavila.train.engine_utils import video_to_device  # noqa: E402
from lavila.train.loop import build_loader, parse_engine_args  # noqa: E402
from lavila.train.pretrain import PretrainEngine  # noqa: E402
from lavila.train.sampler import PerSampleSeededDataset, ResumableDistributedSampler  # noqa: E402
from lavila.utils.distributed import DistInfo  # noqa: E402

TARGET = 0.9
HEIGHT, WIDTH, FPS, CHUNK = 320, 568, 30.0, 15.0
BATCH, SEED = 4, 0


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


def sample_seed(index: int, epoch: int = 0) -> int:
    """The seed ``PerSampleSeededDataset`` gives sample ``index`` (``check_same_frames`` verifies the match)."""
    return (SEED * 1_000_003 + epoch * 100_003 + int(index)) % (2**63 - 1)


class RawDecordClips(Dataset):
    """Baseline: our frame ids (segment sampling with the training jitter, drawn as the first numbers of the
    per-sample seed), decoded with plain decord, one reader per chunk, nothing else."""

    def __init__(self, root: Path, items: list, num_frames: int, crop_first: bool = False) -> None:
        self.root, self.items, self.num_frames = root, items, num_frames
        self.crop_first = crop_first  # the fused decode-crop path draws its crop before the frame ids

    def __len__(self) -> int:
        return len(self.items)

    def frame_ids(self, index: int) -> list[int]:
        _, start, end, _ = self.items[index]
        generator = torch.Generator().manual_seed(sample_seed(index))
        if self.crop_first:
            random_resized_crop_params(HEIGHT, WIDTH, generator=generator)
        return get_frame_ids(round(start * FPS), round(end * FPS), self.num_frames, jitter=True, generator=generator)

    def __getitem__(self, index: int) -> torch.Tensor:
        import decord

        vid = self.items[index][0]
        per_chunk = int(CHUNK * FPS)
        ids = self.frame_ids(index)
        parts = []
        for chunk in sorted({i // per_chunk for i in ids}):
            vr = decord.VideoReader(str(self.root / "videos" / vid / f"{chunk:04d}.mp4"), num_threads=1)
            local = [min(i - chunk * per_chunk, len(vr) - 1) for i in ids if i // per_chunk == chunk]
            parts.append(vr.get_batch(local).asnumpy())
        return torch.from_numpy(np.concatenate(parts))


def engine_args(root: Path, workers: int, num_frames: int, crop: int, extra: tuple[str, ...] = ()
                ) -> argparse.Namespace:
    """The pretraining engine's flags for this data (+ ``extra``); everything else at the engine's defaults."""
    return parse_engine_args(PretrainEngine(), [
        "--root", str(root / "videos"), "--train-metadata", str(root / "meta.pkl"), "--clip-length", str(num_frames),
        "--input-size", str(crop), "--batch-size", str(BATCH), "--workers", str(workers), "--seed", str(SEED),
        "--output-dir", tempfile.gettempdir(), *extra])


def engine_dataset(args: argparse.Namespace, output: str | None = None) -> Dataset:
    """The engine's training set; ``output`` overrides its transform's output ("float" / "uint8")."""
    train, _ = PretrainEngine().build_datasets(args)
    if output is not None:
        train.transform.output = output
    return train


def baseline_loader(dataset: Dataset, workers: int) -> DataLoader:
    """Same sampler order, batch size, drop_last and workers as the engine's loader; default collate."""
    return DataLoader(dataset, batch_size=BATCH, sampler=ResumableDistributedSampler(len(dataset), seed=SEED),
                      num_workers=workers, drop_last=True, generator=torch.Generator().manual_seed(SEED))


def check_same_frames(ours: Dataset, baseline: RawDecordClips, n: int = 6) -> None:
    """Both sides must decode the same frames: compare the frame ids of the first ``n`` samples."""
    seen: list[list[int]] = []
    original = video_mod.get_frame_ids

    def recording(*a, **k):
        ids = original(*a, **k)
        seen.append(ids)
        return ids

    video_mod.get_frame_ids = recording
    try:
        for i in range(n):
            seen.clear()
            PerSampleSeededDataset(ours, seed=SEED)[i]
            expected = baseline.frame_ids(i)
            if seen != [expected]:
                raise AssertionError(f"sample {i}: ours decodes frames {seen}, the baseline {expected}")
    finally:
        video_mod.get_frame_ids = original


def _clips_per_second(loader: DataLoader, prepare=None) -> float:
    """Clips/s after the first batch (worker start-up excluded on both sides); ``prepare(batch)`` is the consumer's
    own per-batch work that belongs to the data path (the engines' normalisation of uint8 clips)."""
    it = iter(loader)
    first = next(it)
    count, tic = 0, time.perf_counter()
    for batch in it:
        if prepare is not None:
            prepare(batch)
        count += len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)
    elapsed = time.perf_counter() - tic
    del first
    return count / elapsed


def measure(quick: bool, workers: int = 2, num_frames: int = 8, crop: int = 224, repeats: int | None = None,
            extra: tuple[str, ...] = ()) -> dict[str, float]:
    root = make_data(num_videos=2 if quick else 6, clips_per_video=20 if quick else 24)
    items = pickle.load(open(root / "meta.pkl", "rb"))
    repeats = repeats or (3 if quick else 9)
    torch.set_num_threads(1)
    args = engine_args(root, workers, num_frames, crop, extra)
    # "engine": the training set as the engine builds it (uint8 clips), each batch normalised by the engines'
    # video_to_device in this process (on CPU here: the cost stays in the measurement); "float": float32 output.
    ours = {"engine": engine_dataset(args), "float": engine_dataset(args, "float")}
    engine_output = ours["engine"].transform.output
    baseline_ds = RawDecordClips(root, items, num_frames, crop_first=bool(args.fused_decode_crop))
    check_same_frames(ours["engine"], baseline_ds)
    makers = {"baseline": lambda: baseline_loader(baseline_ds, workers)}
    for out, ds in ours.items():
        makers[out] = functools.partial(build_loader, ds, args, DistInfo(), True)
    prepare = {"engine": lambda batch: video_to_device(batch[0], torch.device("cpu"), args)}
    results: dict[str, list[float]] = {k: [] for k in makers}
    order = list(makers)
    for name in order:  # warm-up round, not counted: page cache, first kernel loads, CPU frequency
        _clips_per_second(makers[name](), prepare.get(name))
    for r in range(repeats):  # interleaved, alternating order, so machine load affects every side alike
        for name in order if r % 2 == 0 else order[::-1]:
            results[name].append(_clips_per_second(makers[name](), prepare.get(name)))
    ratios = [f / b for f, b in zip(results["engine"], results["baseline"])]
    return {k: statistics.median(v) for k, v in results.items()} | {
        "clips": len(items), "repeats": repeats, "workers": workers, "frames": num_frames,
        "paired_ratio": statistics.median(ratios), "fused": bool(args.fused_decode_crop),
        "engine_output": engine_output}


def stages(quick: bool, num_frames: int = 8, crop: int = 224, repeats: int = 3, extra: tuple[str, ...] = ()
           ) -> dict[str, dict[str, float]]:
    """CPU ms per clip by stage, one process (no workers): baseline vs ours as the engine builds it."""
    from lavila.data import ego4d, transforms

    root = make_data(num_videos=2 if quick else 4, clips_per_video=20 if quick else 24)
    items = pickle.load(open(root / "meta.pkl", "rb"))
    torch.set_num_threads(1)
    spent: collections.Counter = collections.Counter()

    def timed(owner, name: str, key: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*a, **k):
            tic = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.process_time() - tic
        setattr(owner, name, wrapper)

    import decord

    timed(decord.VideoReader, "__init__", "open")  # both sides
    timed(decord.VideoReader, "get_batch", "decode")
    timed(video_readers.PyAVReader, "__init__", "open")  # ours (auto: PyAV where it can seek)
    timed(video_readers.PyAVReader, "get", "decode")
    timed(transforms.VideoTransform, "__call__", "crop+resize+normalise")
    timed(transforms.VideoTransform, "apply_plan", "crop+resize+normalise")
    timed(ego4d, "tokenize", "tokenise")
    sides = {"baseline": RawDecordClips(root, items, num_frames),
             "ours": PerSampleSeededDataset(engine_dataset(engine_args(root, 0, num_frames, crop, extra)),
                                           seed=SEED)}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for r in range(repeats + 1):
        for name, ds in sides.items():
            spent.clear()
            tic = time.process_time()
            for i in range(len(ds)):
                ds[i]
            total = time.process_time() - tic
            if r:  # the first round warms caches
                row = {k: v * 1e3 / len(ds) for k, v in spent.items()}
                runs[name].append(row | {"total": total * 1e3 / len(ds), "rest": (total - sum(spent.values())) *
                                         1e3 / len(ds)})
    return {name: {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}
            for name, rows in runs.items()}


def run(quick: bool = True, extra: tuple[str, ...] = ()) -> list[dict]:
    """Rows for benchmarks/run_all.py: name, baseline, ours, ratio, target, passed, unit."""
    m = measure(quick, extra=extra)
    notes = (f"median of {m['repeats']} interleaved runs after a warm-up round, {m['clips']} clips of {m['frames']} "
             f"frames from 15-s 568x320 30-fps H.264 chunks, batch {BATCH}, {m['workers']} workers, the pretraining "
             f"engine's loader (fused decode-crop {'on' if m['fused'] else 'off'}); median per-run ratio "
             f"{m['paired_ratio']:.3f}")
    ratio = m["engine"] / m["baseline"]
    rows = [{"name": f"data loader {m['frames']}f 224px as the engines use it ({m['engine_output']} clips, normalised "
                     "by the train step) vs raw decord",
             "baseline": round(m["baseline"], 2), "ours": round(m["engine"], 2), "ratio": round(ratio, 3),
             "target": TARGET, "passed": bool(ratio >= TARGET), "unit": "clips/s",
             "notes": notes + "; normalisation of each batch (on CPU, in the consuming process) included"}]
    rows.append({"name": f"data loader {m['frames']}f 224px, float32 normalised in the workers, vs raw decord",
                 "baseline": round(m["baseline"], 2), "ours": round(m["float"], 2),
                 "ratio": round(m["float"] / m["baseline"], 3), "target": "info", "passed": None, "unit": "clips/s",
                 "notes": "informational: the datasets' float32 output (what eval_zeroshot.py uses)"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--stages", action="store_true", help="CPU ms/clip per stage in one process instead")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--fused-decode-crop", action="store_true",
                        help="measure the engines' other resize path (the flag passed to the engine)")
    args = parser.parse_args()
    extra = ("--fused-decode-crop",) if args.fused_decode_crop else ()
    if args.stages:
        for name, row in stages(args.quick, extra=extra).items():
            print(f"{name:9s} " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()) + "  (CPU ms/clip)")
        return
    rows = run(args.quick, extra)
    for r in rows:
        print(f"{r['name']}: raw decord {r['baseline']:.2f} clips/s, ours {r['ours']:.2f} clips/s, "
              f"ratio {r['ratio']:.3f} (target {r['target']}) "
              f"{'-' if r['passed'] is None else 'PASS' if r['passed'] else 'FAIL'}")
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
