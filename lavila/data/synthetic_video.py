"""The generated scenes: the verb x noun vocabulary, action timelines, frame rendering and the H.264 mp4 writer.

An action is a verb x noun pair from the real EK100 class lists: the noun fixes the object's colour and shape (cup =
red square, plate = blue disc...), the verb fixes its motion (take = moves up, put = moves down, pull = moves left,
move = moves right, open = grows, close = shrinks, shake = shakes sideways). A skin-coloured "hand" blob holds the
object and the "camera" pans slowly over a textured background. ``synthetic.py`` (Ego4D / EK100 / EgoSchema) and
``synthetic_benchmarks.py`` (EGTEA, Charades-Ego, EgoMCQ) write the datasets from these videos.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

__all__ = ["VERBS", "NOUNS", "Action", "check_class_ids", "write_video", "render_frames", "make_timeline",
           "write_chunked_video"]

# verb key -> (EK100 verb_class id, motion, [(EK100 verb instance, infinitive text, third person text)])
VERBS: dict[str, tuple[int, str, list[tuple[str, str, str]]]] = {
    "take": (0, "up", [("take", "take", "takes"), ("pick-up", "pick up", "picks up")]),
    "put": (1, "down", [("put", "put", "puts"), ("put-down", "put down", "puts down")]),
    "pull": (31, "left", [("pull", "pull", "pulls")]),
    "move": (11, "right", [("move", "move", "moves")]),
    "open": (3, "grow", [("open", "open", "opens")]),
    "close": (4, "shrink", [("close", "close", "closes")]),
    "shake": (15, "shake", [("shake", "shake", "shakes")]),
}
# noun key -> (EK100 noun_class id, RGB colour, shape)
NOUNS: dict[str, tuple[int, tuple[int, int, int], str]] = {
    "cup": (13, (230, 30, 30), "square"),
    "plate": (2, (30, 60, 235), "disc"),
    "bowl": (7, (30, 200, 40), "triangle"),
    "knife": (4, (245, 225, 20), "hbar"),
    "pan": (5, (210, 40, 210), "diamond"),
    "bottle": (15, (20, 220, 230), "vbar"),
    "lid": (6, (250, 250, 250), "ring"),
    "sponge": (9, (10, 10, 10), "square"),
}
HAND_RGB = (222, 170, 140)


@dataclass(frozen=True)
class Action:
    verb: str
    noun: str
    start: float
    end: float
    cx: float  # start centre / size as fractions of the frame, jittered per action
    cy: float
    size: float


def check_class_ids() -> None:
    """The ids above must be the real EK100 ids (the class lists ship in lavila/resources)."""
    files = resources.files("lavila.resources")
    verbs = pd.read_csv(files.joinpath("ek100_verb_classes.csv").open())
    nouns = pd.read_csv(files.joinpath("ek100_noun_classes.csv").open())
    vmap, nmap = dict(zip(verbs.key, verbs.id)), dict(zip(nouns.key, nouns.id))
    for key, (cid, _, _) in VERBS.items():
        assert vmap[key] == cid, (key, cid)
    for key, (cid, _, _) in NOUNS.items():
        assert nmap[key] == cid, (key, cid)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 30.0, crf: int = 18,
                gop: int = 30) -> int:
    """Encode uint8 RGB frames (H, W, 3), H and W even, as an H.264 mp4 with PyAV; returns the frame count."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with av.open(str(path), "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                height, width = frame.shape[:2]
                if height % 2 or width % 2:
                    raise ValueError(f"H.264 yuv420p needs even frame sizes, got {width}x{height}")
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"preset": "ultrafast", "crf": str(crf), "g": str(gop), "threads": "1"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError(f"no frames to write to {path}")
        for packet in stream.encode():
            container.mux(packet)
    return count


def make_timeline(rng: np.random.Generator, duration: float, verbs: list[str], nouns: list[str],
                  min_sec: float, max_sec: float) -> list[Action]:
    """Back-to-back actions with random verb x noun pairs covering ``duration`` seconds."""
    actions, t = [], 0.0
    while duration - t >= min_sec:
        length = min(float(rng.uniform(min_sec, max_sec)), duration - t)
        actions.append(Action(verbs[rng.integers(len(verbs))], nouns[rng.integers(len(nouns))], round(t, 2),
                              round(t + length, 2), float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.4, 0.6)),
                              float(rng.uniform(0.2, 0.26))))
        t = round(t + length, 2)
    return actions


def _background(rng: np.random.Generator, height: int, width: int, margin: int) -> np.ndarray:
    cells = rng.uniform(70, 140, size=((height + 2 * margin) // 8 + 2, (width + 2 * margin) // 8 + 2, 1))
    tint = rng.uniform(0.9, 1.1, size=(1, 1, 3))
    big = np.kron(cells * tint, np.ones((8, 8, 1)))[:height + 2 * margin, :width + 2 * margin]
    return big.astype(np.uint8)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "square":
        return (np.abs(dx) < r) & (np.abs(dy) < r)
    if shape == "disc":
        return dx * dx + dy * dy < r * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 < r * r) & (d2 > 0.3 * r * r)
    if shape == "triangle":
        return (dy < r) & (dy > -r) & (np.abs(dx) < (dy + r) * 0.6)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) < 1.2 * r
    if shape == "hbar":
        return (np.abs(dx) < 1.6 * r) & (np.abs(dy) < 0.45 * r)
    if shape == "vbar":
        return (np.abs(dx) < 0.45 * r) & (np.abs(dy) < 1.6 * r)
    raise ValueError(f"unknown shape {shape}")


def _paint(frame: np.ndarray, xx: np.ndarray, yy: np.ndarray, shape: str, cx: float, cy: float, r: float,
           colour: tuple[int, int, int]) -> None:
    """Fill ``shape`` centred at (cx, cy) with half-size r, evaluating the mask only inside its bounding box."""
    reach = 1.7 * r + 1
    y0, y1 = max(0, int(cy - reach)), min(frame.shape[0], int(cy + reach) + 1)
    x0, x1 = max(0, int(cx - reach)), min(frame.shape[1], int(cx + reach) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
    mask = _shape_mask("disc", dx, dy * 1.4, r) if shape == "hand" else _shape_mask(shape, dx, dy, r)
    frame[y0:y1, x0:x1][mask] = colour


def _pose(action: Action, p: float, height: int, width: int) -> tuple[float, float, float]:
    """Object centre (x, y) and half-size in pixels at progress p in [0, 1] of the action."""
    motion = VERBS[action.verb][1]
    cx, cy, r = action.cx * width, action.cy * height, action.size * height
    travel_x, travel_y = 0.55 * width, 0.55 * height
    if motion == "up":
        cy += travel_y * (0.5 - p)
    elif motion == "down":
        cy += travel_y * (p - 0.5)
    elif motion == "left":
        cx += travel_x * (0.5 - p)
    elif motion == "right":
        cx += travel_x * (p - 0.5)
    elif motion == "grow":
        r *= 0.45 + 1.0 * p
    elif motion == "shrink":
        r *= 1.45 - 1.0 * p
    elif motion == "shake":
        cx += 0.22 * width * math.sin(2 * math.pi * 2.5 * p)
    return cx, cy, r


def render_frames(actions: list[Action], t0: float, t1: float, fps: float, height: int, width: int,
                  seed: int) -> Iterator[np.ndarray]:
    """Frames for times [t0, t1) of a video with this action timeline (uint8 (H, W, 3))."""
    rng = np.random.default_rng(seed)
    margin = max(4, height // 10)
    bg = _background(rng, height, width, margin)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    starts = np.array([a.start for a in actions])
    first, last = int(round(t0 * fps)), int(round(t1 * fps))
    for index in range(first, last):
        t = index / fps
        ox = int(round(margin * (1 + 0.9 * math.sin(2 * math.pi * t / 7.0))))
        oy = int(round(margin * (1 + 0.9 * math.cos(2 * math.pi * t / 5.0))))
        frame = bg[oy:oy + height, ox:ox + width].copy()
        k = int(np.searchsorted(starts, t, side="right")) - 1
        if 0 <= k < len(actions) and t < actions[k].end:
            action = actions[k]
            p = (t - action.start) / max(action.end - action.start, 1e-6)
            cx, cy, r = _pose(action, p, height, width)
            _paint(frame, xx, yy, "hand", cx + 0.9 * r, cy + 0.8 * r, 0.55 * r, HAND_RGB)
            _, colour, shape = NOUNS[action.noun]
            _paint(frame, xx, yy, shape, cx, cy, r, colour)
        yield frame


def write_chunked_video(video_dir: Path, actions: list[Action], duration: float, chunk_len: float, fps: float,
                        height: int, width: int, seed: int) -> list[Path]:
    """``video_dir/0000.mp4``, ``0001.mp4``... each ``chunk_len`` seconds of the same continuous video."""
    paths = []
    for chunk in range(int(math.ceil(duration / chunk_len - 1e-9))):
        t0, t1 = chunk * chunk_len, min((chunk + 1) * chunk_len, duration)
        path = video_dir / f"{chunk:04d}.mp4"
        write_video(path, render_frames(actions, t0, t1, fps, height, width, seed), fps)
        paths.append(path)
    return paths
