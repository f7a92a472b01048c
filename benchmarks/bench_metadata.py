"""Ego4D-scale metadata benchmark (issue 19): today's list of Python objects vs flat, memory-mapped arrays.

Generates its own metadata pickle (default 4,000,000 clips, 3 narrations each, ~0.5 GB; deleted afterwards) and
measures, each phase in a fresh process, in the same run:

* ``pickle``: a plain ``pickle.load`` of the file (the reference time for the first build);
* ``old`` (today's path, kept here as a minimal copy: ``safe_pickle_load`` -> list of tuples, a narration drawn
  with ``torch.randint`` per access): build time, metadata memory (RSS / PSS added by the load), then 4 forked
  DataLoader workers that read items in one shuffled pass, and the PSS they add to the total. To spare the shared
  machine ~8.5 GB the workers read only the first ``--old-worker-fraction`` of the clips (default 0.25); the figure
  is also given scaled to all clips (copy-on-read grows with the pages touched);
* ``first``: ``Ego4DPretrainDataset`` built without a cache (restricted unpickling, flat arrays, cache written);
* ``cached``: the same dataset from its cache (the "second start"), the metadata memory (construction, then every
  array page resident), and 4 forked workers reading **every** item exactly as ``__getitem__`` reads its
  metadata (``locate``, video id, times, ``narration``; no video decoding, no tokenisation).

Targets: first build <= plain ``pickle.load``; cached start <= 2 s; metadata <= 0.8 GB per process (fully
resident); the 4 workers add <= 0.5 GB PSS. Standalone:
``python benchmarks/bench_metadata.py [--clips 4000000] [--narrations 3] [--old-worker-fraction 0.25]``.
``--quick`` uses 400,000 clips; under ``run_all.py`` it measures 1M clips (200k with ``--quick``;
``$LAVILA_BENCH_METADATA_CLIPS`` overrides) to keep the whole run within 10 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import make_row  # noqa: E402

VERBS = ["picks up", "puts down", "opens", "closes", "cuts", "washes", "moves", "holds", "turns", "pours", "stirs",
         "wipes", "drops", "touches", "adjusts"]
NOUNS = ["the knife", "a cup", "the plate", "a bowl", "the lid", "the tap", "a spoon", "the pan", "the drawer",
         "a towel", "the onion", "a bottle", "the door", "the phone", "a box"]
PLACES = ["on the table", "in the sink", "from the shelf", "with his left hand", "near the stove", "in the fridge",
          "on the counter", "with a cloth"]
GiB = 1024**3
_KEEP: list = []  # a phase's big objects stay alive until os._exit: freeing millions of them is not measured


# ------------------------------------------------------------------------------------------------ measuring


def _smaps(pid: int | str = "self") -> dict[str, int]:
    """Rss / Pss of a process in bytes (``/proc/<pid>/smaps_rollup``)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in ("Rss:", "Pss:"):
                out[parts[0][:-1].lower()] = int(parts[1]) * 1024
    return out


def generate(path: Path, clips: int, narrations: int, seed: int = 0) -> None:
    """A LaViLa-style pickle: ``(video_uid, start, end, [narration] * k)`` with distinct narration strings."""
    import numpy as np

    rng = np.random.default_rng(seed)
    uids = [f"{rng.integers(1 << 62):016x}-{v:04x}-4d2e-9c1a-{v:012x}" for v in range(max(1, clips // 400))]
    vid = np.sort(rng.integers(len(uids), size=clips)).tolist()
    start = rng.uniform(0.0, 3000.0, size=clips)
    end = (start + rng.uniform(0.5, 2.5, size=clips)).tolist()
    start = start.tolist()
    words = [rng.integers(n, size=clips * narrations).tolist() for n in (len(VERBS), len(NOUNS), len(PLACES))]
    texts = [f"#C C {VERBS[a]} {NOUNS[b]} {PLACES[c]}" for a, b, c in zip(*words)]
    del words
    k = narrations
    items = [(uids[vid[i]], start[i], end[i], texts[i * k:(i + 1) * k]) for i in range(clips)]
    with open(path, "wb") as f:
        pickle.dump(items, f, protocol=4)
    _KEEP.append(items)


class OldEgo4DMetadata:
    """Today's path (before issue 19), minimal copy: the restricted unpickler's list of tuples, one narration
    drawn per access."""

    def __init__(self, path: str) -> None:
        from lavila.utils.checkpoint import safe_pickle_load

        self.items = list(safe_pickle_load(path))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> int:
        import torch

        vid, start, end = self.items[index][:3]
        float(start), float(end)
        text = self.items[index][3]
        if not isinstance(text, str):
            text = text[int(torch.randint(len(text), (1,)).item())]
        return len(vid) + len(text)


class NewMetadataReader:
    """Reads an item's metadata exactly as ``Ego4DPretrainDataset.__getitem__`` does (without the video)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> int:
        part, i = self.dataset.locate(index)
        vid = part.video_id(i)
        start, end = part.times(i)
        return len(vid) + len(part.narration(i))


def _workers_pss(dataset, indices: list[int], workers: int) -> dict:
    """Total PSS of this process + ``workers`` forked DataLoader workers after they read ``indices`` (shuffled)."""
    import torch
    from torch.utils.data import DataLoader, SubsetRandomSampler

    before = _smaps()["pss"]
    sampler = SubsetRandomSampler(indices, torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=4096, sampler=sampler, num_workers=workers,
                        persistent_workers=True, collate_fn=len, multiprocessing_context="fork")
    t0 = time.perf_counter()
    it = iter(loader)
    read = sum(it)
    seconds = time.perf_counter() - t0
    pids = [w.pid for w in it._workers]
    total = _smaps()["pss"] + sum(_smaps(p)["pss"] for p in pids)
    del it, loader
    return {"main_pss_before": before, "total_pss": total, "added_pss": total - before, "read": read,
            "seconds": seconds}


def phase(name: str, pickle_path: str, args: argparse.Namespace) -> dict:
    import gc

    import torch  # noqa: F401 - imported before the baseline in every phase

    out: dict = {}
    if name == "pickle":
        t0 = time.perf_counter()
        with open(pickle_path, "rb") as f:
            items = pickle.load(f)
        out["seconds"] = time.perf_counter() - t0
        out["clips"] = len(items)
        _KEEP.append(items)
        return out
    if name == "old":
        base = _smaps()
        t0 = time.perf_counter()
        ds = OldEgo4DMetadata(pickle_path)
        out["seconds"] = time.perf_counter() - t0
        gc.collect()
        mem = _smaps()
        out["rss"], out["pss"] = mem["rss"] - base["rss"], mem["pss"] - base["pss"]
        n = int(len(ds) * args.old_worker_fraction)
        out["workers"] = _workers_pss(ds, list(range(n)), args.workers)
        _KEEP.append(ds)
        return out
    from lavila.data.clips import ClipDataset
    from lavila.data.ego4d import Ego4DPretrainDataset

    root = Path(pickle_path).parent / "videos"  # empty: no clip is decoded; removed with the pickle's folder
    root.mkdir(exist_ok=True)
    ClipDataset(root, backend=args.backend)  # tokenizer, decoders, kernels: loaded before the baseline
    base = _smaps()
    t0 = time.perf_counter()
    ds = Ego4DPretrainDataset(root, pickle_path, backend=args.backend)
    out["seconds"] = time.perf_counter() - t0
    out["cache"] = str(ds.parts[0].cache_path)
    mem = _smaps()
    out["rss"], out["pss"] = mem["rss"] - base["rss"], mem["pss"] - base["pss"]
    if name == "cached":
        import numpy as np

        arrays = [a for part in ds.parts for a in vars(part).values() if isinstance(a, np.ndarray)]
        arrays += [t.data for part in ds.parts for t in (part.video_ids, part.texts)]
        arrays += [t.offsets for part in ds.parts for t in (part.video_ids, part.texts)]
        out["array_bytes"] = int(sum(a.nbytes for a in arrays))
        for a in arrays:  # every page resident: the most the metadata can take in one process
            a.view("u1").max(initial=0) if a.size else None
        mem = _smaps()
        out["rss_resident"], out["pss_resident"] = mem["rss"] - base["rss"], mem["pss"] - base["pss"]
        out["workers"] = _workers_pss(NewMetadataReader(ds), list(range(len(ds))), args.workers)
    return out


def _run_phase(name: str, pickle_path: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--pickle", str(pickle_path), "--workers", str(args.workers),
           "--old-worker-fraction", str(args.old_worker_fraction), "--backend", args.backend]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> list[dict]:
    folder = Path(tempfile.mkdtemp(prefix="lavila_bench_meta_"))
    path = folder / "ego4d_meta.pkl"
    cache = Path(str(path) + ".lavila-meta")
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--phase", "generate", "--pickle", str(path), "--clips",
                        str(args.clips), "--narrations", str(args.narrations)], check=True)
        print(f"generated {args.clips:,} clips x {args.narrations} narrations: {path.stat().st_size / 1e6:.0f} MB "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
        res = {}
        for name in ("pickle", "old", "first", "cached"):
            t0 = time.perf_counter()
            res[name] = _run_phase(name, path, args)
            print(f"phase {name}: {time.perf_counter() - t0:.0f} s {json.dumps(res[name])}", flush=True)
        cache_mb = cache.stat().st_size / 1e6 if cache.exists() else float("nan")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    old, new = res["old"], res["cached"]
    frac = args.old_worker_fraction
    old_added = old["workers"]["added_pss"] / frac
    size = f"{args.clips / 1e6:g}M clips x {args.narrations} narrations"
    return [
        make_row(f"Ego4D metadata first build ({size}) vs plain pickle.load", res["pickle"]["seconds"],
                 res["first"]["seconds"], "s", 1.0,
                 notes=f"today's dataset build {old['seconds']:.1f} s; cache file {cache_mb:.0f} MB"),
        make_row(f"Ego4D metadata cached start ({size}) vs today's build", old["seconds"], new["seconds"], "s",
                 "<= 2 s", passed=new["seconds"] <= 2.0),
        make_row(f"Ego4D metadata memory per process ({size}), every page resident", old["rss"] / GiB,
                 new["rss_resident"] / GiB, "GiB RSS", "<= 0.8 GiB", passed=new["rss_resident"] <= 0.8 * GiB,
                 notes=f"PSS today {old['pss'] / GiB:.2f}; ours after construction {new['rss'] / GiB:.3f} RSS; "
                       f"arrays {new['array_bytes'] / GiB:.2f}"),
        make_row(f"PSS added by {args.workers} forked workers reading every item ({size})", old_added / GiB,
                 new["workers"]["added_pss"] / GiB, "GiB", "<= 0.5 GiB",
                 passed=new["workers"]["added_pss"] <= 0.5 * GiB,
                 notes=(f"today measured on the first {frac:g} of the clips: {old['workers']['added_pss'] / GiB:.2f} "
                        f"GiB, scaled x{1 / frac:g}; total PSS main+workers today "
                        f"{old['workers']['total_pss'] / GiB:.2f} (partial), ours "
                        f"{new['workers']['total_pss'] / GiB:.2f}; worker pass today "
                        f"{old['workers']['seconds']:.0f} s (partial), ours {new['workers']['seconds']:.0f} s")),
    ]


def run(quick: bool = False) -> list[dict]:
    """For ``run_all.py``: 1M clips (200k with ``--quick``) to stay within its 10 minutes, or
    ``$LAVILA_BENCH_METADATA_CLIPS``; the 4M-clip figures come from running this script on its own."""
    args = _parser().parse_args([])
    args.clips = int(os.environ.get("LAVILA_BENCH_METADATA_CLIPS", 200_000 if quick else 1_000_000))
    return measure(args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=4_000_000)
    p.add_argument("--narrations", type=int, default=3)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--old-worker-fraction", type=float, default=0.25)
    p.add_argument("--backend", default="auto")
    p.add_argument("--quick", action="store_true", help="400,000 clips")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--pickle", help=argparse.SUPPRESS)
    return p


def main() -> int:
    args = _parser().parse_args()
    if args.phase == "generate":
        generate(Path(args.pickle), args.clips, args.narrations)
    elif args.phase:
        print(json.dumps(phase(args.phase, args.pickle, args)))
    if args.phase:
        sys.stdout.flush()
        os._exit(0)  # skip the interpreter's teardown of millions of objects (tens of seconds under load)
    if args.quick:
        args.clips = 400_000
    from common import format_table

    rows = measure(args)
    print(format_table(rows))
    return 1 if any(r["passed"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
