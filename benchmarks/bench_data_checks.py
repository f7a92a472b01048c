"""Start-up data checks (``lavila.data.checks``) on a 100k-row EK100 CSV over 500 chunked videos.

The check reads the CSV and one container header per video (no frame is decoded). Baseline: what every run does
anyway, reading the CSV with ``lavila.data.ek100.read_ek100_csv`` (informational ratio). Target: the whole check
in <= 10 s on the 2-core CI machine. Standalone: ``python benchmarks/bench_data_checks.py [--quick]``.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, make_row, median_seconds  # noqa: E402

from lavila.data.checks import check_mir  # noqa: E402
from lavila.data.ek100 import read_ek100_csv  # noqa: E402
from lavila.data.synthetic_video import write_video  # noqa: E402

TARGET_S = 10.0


def _dataset(folder: Path, rows: int, videos: int) -> Path:
    chunk = folder / "chunk.mp4"
    write_video(chunk, (np.full((32, 32, 3), i * 8, np.uint8) for i in range(30)), fps=30.0)
    ids = [f"P{v // 100:02d}_{v % 100:03d}" for v in range(videos)]
    for vid in ids:  # every video: 2 chunks, links to the same 1-s file (headers only are read)
        (folder / "videos" / vid).mkdir(parents=True)
        for name in ("0000.mp4", "0001.mp4"):
            (folder / "videos" / vid / name).symlink_to(chunk)
    rng = np.random.default_rng(0)
    start = rng.uniform(0, 14, rows)
    stamp = [f"00:00:{s:05.2f}" for s in start]
    stop = [f"00:00:{s + 0.5:05.2f}" for s in start]
    video = [ids[i % videos] for i in range(rows)]
    clips = pd.DataFrame({"narration_id": [f"{v}_{i}" for i, v in enumerate(video)], "participant_id": "P01",
                          "video_id": video, "narration_timestamp": stamp, "start_timestamp": stamp,
                          "stop_timestamp": stop, "start_frame": 1, "stop_frame": 2, "narration": "take plate",
                          "verb": "take", "verb_class": 0, "noun": "plate", "noun_class": 2, "all_nouns": "['plate']",
                          "all_noun_classes": "[2]"})
    csv = folder / "EPIC_100_retrieval_train.csv"
    clips.to_csv(csv, index=False)
    clips[["narration_id", "narration"]].to_csv(folder / "EPIC_100_retrieval_train_sentence.csv", index=False)
    return csv


def run(quick: bool = False) -> list[dict]:
    rows, videos = (20_000, 100) if quick else (100_000, 500)
    with tempfile.TemporaryDirectory() as tmp:
        csv = _dataset(Path(tmp), rows, videos)
        repeats = 1 if quick else 3
        read_s, _ = median_seconds(lambda: read_ek100_csv(csv), repeats)
        check = lambda: check_mir(csv, Path(tmp) / "videos", 15.0, True, "--train-metadata")  # noqa: E731
        check_s, _ = median_seconds(check, repeats)
        cpu0 = time.process_time()
        check()
        cpu_s = time.process_time() - cpu0
    return [make_row(f"start-up data check, {rows // 1000}k-row EK100 CSV over {videos} videos (vs read_ek100_csv)",
                     read_s, check_s, "s", f"<= {TARGET_S:g} s", passed=check_s <= TARGET_S,
                     notes=f"check {check_s:.2f}s wall, {cpu_s:.2f}s CPU (columns, timestamps, narrations, video "
                           f"files, durations from headers); reading the CSV alone {read_s:.2f}s; median of "
                           f"{repeats}")]


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
