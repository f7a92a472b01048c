"""Generated egocentric-like datasets in the real Ego4D / EPIC-KITCHENS-100 / EgoSchema layouts.

Each video is a timeline of actions. An action is a verb x noun pair from the real EK100 class lists: the noun
fixes the object's colour and shape (cup = red square, plate = blue disc...), the verb fixes its motion (take =
moves up, put = moves down, pull = moves left, move = moves right, open = grows, close = shrinks, shake = shakes
sideways). A skin-coloured "hand" blob holds the object and the "camera" pans slowly over a textured background.
Narrations describe exactly that ("#C C takes the cup", "take cup"), so a small model can learn retrieval.

Written under ``--out`` (H.264 mp4 via PyAV, deterministic from ``--seed``)::

    ego4d/videos/<video_uid>/0000.mp4, 0001.mp4 ...   15-s chunks (video-mamba-suite naming)
    ego4d/ego4d_train.pkl                            [(video_uid, start_sec, end_sec, [narrations...]), ...]
    ek100/videos/<video_id>/0000.mp4 ...
    ek100/epic-kitchens-100-annotations/EPIC_100_{train,validation}.csv, EPIC_100_{verb,noun}_classes.csv
    ek100/epic-kitchens-100-annotations/retrieval_annotations/EPIC_100_retrieval_{train,test}[_sentence].csv
    ek100/epic-kitchens-100-annotations/retrieval_annotations/relevancy/caption_relevancy_EPIC_100_retrieval_*.pkl
    egoschema/videos/<q_uid>.mp4, egoschema/questions.json, egoschema/answers.json
    egtea/{action_idx,verb_idx,noun_idx}.txt, egtea/{train,test}_split1.txt, egtea/cropped_clips/<session>/<clip>.mp4
    charades_ego/CharadesEgo/{Charades_v1_classes.txt, CharadesEgo_v1_{train,test}_only1st.csv,
        metadata_filtered_train.pkl}, charades_ego/CharadesEgo_v1_480/<id>.mp4
    ego4d/egomcq.json                                EgoVLP's format, on the Ego4D clips above
    manifest.json

CLI::

    python -m lavila.data.synthetic --out demo_data --seed 0 --ego4d-videos 8 --height 64 --width 96
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import time
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

__all__ = ["VERBS", "NOUNS", "Action", "write_video", "render_frames", "make_timeline", "generate", "main"]

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


def _check_class_ids() -> None:
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


def _timestamp(seconds: float, digits: int = 2) -> str:
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:0{3 + digits}.{digits}f}"


def _ego4d_narrations(rng: np.random.Generator, verb: str, noun: str) -> list[str]:
    forms = VERBS[verb][2]
    _, inf, third = forms[rng.integers(len(forms))]
    texts = [f"#C C {third} the {noun}", f"{inf} {noun}"]
    texts += [f"#C C {f[2]} the {noun}" for f in forms if f[1] != inf]
    return texts


def _ek100_rows(actions: list[Action], video_id: str, fps: float, rng: np.random.Generator) -> list[dict]:
    rows = []
    for i, a in enumerate(actions):
        key, inf, _ = VERBS[a.verb][2][rng.integers(len(VERBS[a.verb][2]))]
        noun_class = NOUNS[a.noun][0]
        rows.append({
            "narration_id": f"{video_id}_{i}", "participant_id": video_id.split("_")[0], "video_id": video_id,
            "narration_timestamp": _timestamp(a.start, 3), "start_timestamp": _timestamp(a.start),
            "stop_timestamp": _timestamp(a.end), "start_frame": int(round(a.start * fps)) + 1,
            "stop_frame": int(round(a.end * fps)), "narration": f"{inf} {a.noun}", "verb": key,
            "verb_class": VERBS[a.verb][0], "noun": a.noun, "noun_class": noun_class,
            "all_nouns": f"['{a.noun}']", "all_noun_classes": f"[{noun_class}]"})
    return rows


def _sentences(df: pd.DataFrame) -> pd.DataFrame:
    """The ``_sentence.csv`` of a split: each distinct narration once, with the id of its first clip."""
    first = df.drop_duplicates("narration", keep="first")
    return first[["narration_id", "narration"]].reset_index(drop=True)


def _class_csv(names: dict, path: Path) -> None:
    rows = sorted((v[0], k) for k, v in names.items())
    pd.DataFrame({"id": [r[0] for r in rows], "key": [r[1] for r in rows], "instances": [f"['{r[1]}']" for r in rows],
                  "category": ["synthetic"] * len(rows)}).to_csv(path, index=False)


# ---- LaViLa's extra benchmarks: EGTEA Gaze+, Charades-Ego, EgoMCQ (in their real files and layouts) ------------

_GERUNDS = {"take": "Taking", "put": "Putting", "pull": "Pulling", "move": "Moving", "open": "Opening",
            "close": "Closing", "shake": "Shaking"}
CHARADES_HEADER = ["id", "subject", "scene", "quality", "relevance", "verified", "script", "objects", "descriptions",
                   "actions", "length", "egocentric", "charades_video"]


def _one_action_clip(rng: np.random.Generator, verb: str, noun: str, seconds: float) -> Action:
    return Action(verb, noun, 0.0, seconds, float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.4, 0.6)),
                  float(rng.uniform(0.2, 0.26)))


def write_egtea(out: Path, rng: np.random.Generator, pairs: list[tuple[str, str]], clips: int, fps: float,
                height: int, width: int, seed: int) -> dict:
    """``egtea/action_idx.txt`` ("Take_cup 1": one class per verb x noun pair), ``verb_idx.txt``, ``noun_idx.txt``,
    ``{train,test}_split1.txt`` ("<clip_id> <action> <verb> <noun>", every other clip in test) and the clips at
    ``egtea/cropped_clips/<first three dash fields>/<clip_id>.mp4``; some clips are shorter than 32 frames."""
    root = out / "egtea"
    root.mkdir(parents=True, exist_ok=True)
    verbs = sorted({v for v, _ in pairs}, key=list(VERBS).index)
    nouns = sorted({n for _, n in pairs}, key=list(NOUNS).index)
    (root / "action_idx.txt").write_text("".join(f"{v.capitalize()}_{n} {i + 1}\n" for i, (v, n) in enumerate(pairs)))
    (root / "verb_idx.txt").write_text("".join(f"{v.capitalize()} {i + 1}\n" for i, v in enumerate(verbs)))
    (root / "noun_idx.txt").write_text("".join(f"{n} {i + 1}\n" for i, n in enumerate(nouns)))
    sessions = ["OP01-R01-PastaSalad", "OP02-R03-BaconAndEggs"]
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for k in range(clips):
        action = k % len(pairs) if k < len(pairs) else int(rng.integers(len(pairs)))
        verb, noun = pairs[action]
        seconds = round(float(rng.uniform(0.8, 2.0)), 2)
        session = sessions[k % len(sessions)]
        start_ms, first = 1000 * (10 + 5 * k), 300 * (k + 1)
        clip_id = (f"{session}-{start_ms}-{start_ms + int(seconds * 1000)}-F{first:06d}-"
                   f"F{first + int(seconds * fps):06d}")
        write_video(root / "cropped_clips" / session / f"{clip_id}.mp4",
                    render_frames([_one_action_clip(rng, verb, noun, seconds)], 0.0, seconds, fps, height, width,
                                  seed + k), fps)
        lines["test" if k % 2 == 0 else "train"].append(
            f"{clip_id} {action + 1} {verbs.index(verb) + 1} {nouns.index(noun) + 1}\n")
    for split, rows in lines.items():
        (root / f"{split}_split1.txt").write_text("".join(rows))
    return {"root": "egtea/cropped_clips", "test": "egtea/test_split1.txt", "train": "egtea/train_split1.txt",
            "classes": "egtea/action_idx.txt", "clips": clips}


def write_charades_ego(out: Path, rng: np.random.Generator, pairs: list[tuple[str, str]], test_videos: int,
                       train_videos: int, fps: float, height: int, width: int, seed: int,
                       num_classes: int = 6, action_sec: float = 2.0) -> dict:
    """``charades_ego/CharadesEgo/`` with ``Charades_v1_classes.txt`` ("c000 Taking a cup"), the
    ``CharadesEgo_v1_{train,test}_only1st.csv`` (actions "cXXX start end;..." in column 9, length in column 10),
    ``metadata_filtered_train.pkl`` (LaViLa's trimmed clips) and videos ``charades_ego/CharadesEgo_v1_480/<id>.mp4``
    with two actions each; the test videos cycle through the classes (all covered when 2 x (videos - 1) >= classes,
    and then the last test video has no action, as some real ones)."""
    ann, videos = out / "charades_ego" / "CharadesEgo", out / "charades_ego" / "CharadesEgo_v1_480"
    ann.mkdir(parents=True, exist_ok=True)
    chosen = [pairs[i] for i in sorted(rng.choice(len(pairs), min(num_classes, len(pairs)), replace=False))]
    names = [f"{_GERUNDS[v]} a {n}" for v, n in chosen]
    (ann / "Charades_v1_classes.txt").write_text("".join(f"c{i:03d} {t}\n" for i, t in enumerate(names)))
    cycle = iter(list(range(len(chosen))) * (2 * test_videos + 2))
    clips = []
    for split, count in (("test", test_videos), ("train", train_videos)):
        rows = []
        for k in range(count):
            video_id = "".join(rng.choice(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 5)) + "EGO"
            empty = split == "test" and k == count - 1 and 2 * (count - 1) >= len(chosen)
            classes = [] if empty else [next(cycle) if split == "test" else int(rng.integers(len(chosen)))
                                        for _ in range(2)]
            acts = [Action(*chosen[c], j * action_sec, (j + 1) * action_sec, float(rng.uniform(0.4, 0.6)),
                           float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.2, 0.26))) for j, c in enumerate(classes)]
            length = 2 * action_sec
            write_video(videos / f"{video_id}.mp4",
                        render_frames(acts, 0.0, length, fps, height, width, seed + len(clips) + 100 * k), fps)
            field = ";".join(f"c{c:03d} {a.start:.2f} {a.end:.2f}" for c, a in zip(classes, acts))
            rows.append([video_id, "SUBJ", "Kitchen", "6", "7", "Yes", "script", "cup;plate", "descriptions", field,
                         f"{length:.2f}", "Yes", video_id[:-3]])
            if split == "train":
                clips += [(video_id, a.start, a.end, names[c]) for c, a in zip(classes, acts)]
        pd.DataFrame(rows, columns=CHARADES_HEADER).to_csv(ann / f"CharadesEgo_v1_{split}_only1st.csv", index=False)
    with open(ann / "metadata_filtered_train.pkl", "wb") as f:
        pickle.dump(clips, f, protocol=4)
    rel = "charades_ego/CharadesEgo/"
    return {"root": "charades_ego/CharadesEgo_v1_480", "test": rel + "CharadesEgo_v1_test_only1st.csv",
            "train": rel + "CharadesEgo_v1_train_only1st.csv", "classes": rel + "Charades_v1_classes.txt",
            "train_clips": rel + "metadata_filtered_train.pkl", "test_videos": test_videos}


def write_egomcq(out: Path, rng: np.random.Generator, ego_items: list, questions: int) -> dict | None:
    """``ego4d/egomcq.json`` (EgoVLP's format) over the generated Ego4D clips: even questions inter-video (type 1:
    the four distractors from other videos), odd ones intra-video (type 2: all from the query's video). Distractors
    never share the query's text. None when the Ego4D clips cannot make a question."""
    by_video: dict[str, list[tuple]] = {}
    for item in ego_items:
        by_video.setdefault(item[0], []).append(item)

    def choice(item: tuple) -> dict:
        return {"video_uid": item[0], "clip_start": item[1], "clip_end": item[2], "clip_text": item[3][0],
                "tag_verb": "[0]", "tag_noun": "[0]"}

    data: dict[str, dict] = {}
    for _ in range(questions * 4):
        if len(data) == questions:
            break
        kind = 1 if len(data) % 2 == 0 else 2
        query = ego_items[int(rng.integers(len(ego_items)))]
        pool = [it for it in (ego_items if kind == 1 else by_video[query[0]])
                if (it[0] != query[0]) == (kind == 1) and not set(it[3]) & set(query[3])]
        if len(pool) < 4:
            continue
        options = [pool[i] for i in rng.choice(len(pool), 4, replace=False)]
        answer = int(rng.integers(5))
        options.insert(answer, query)
        data[str(len(data))] = {"query": choice(query), "choices": {str(j): choice(o) for j, o in enumerate(options)},
                                "answer": answer, "types": kind}
    if not data:
        return None
    (out / "ego4d").mkdir(parents=True, exist_ok=True)
    (out / "ego4d" / "egomcq.json").write_text(json.dumps(data, indent=1))
    return {"root": "ego4d/videos", "metadata": "ego4d/egomcq.json", "questions": len(data)}


def generate(out: str | os.PathLike, seed: int = 0, ego4d_videos: int = 6, ek100_train_videos: int = 4,
             ek100_test_videos: int = 2, egoschema_questions: int = 8, video_sec: float = 30.0,
             chunk_len: float = 15.0, fps: float = 30.0, height: int = 64, width: int = 96, num_verbs: int = 4,
             num_nouns: int = 5, action_min_sec: float = 2.0, action_max_sec: float = 4.0,
             egoschema_sec: float = 4.0, egtea_clips: int = 6, charades_test_videos: int = 3,
             charades_train_videos: int = 2, egomcq_questions: int = 4) -> dict:
    """Write all generated datasets under ``out``; returns the manifest (also saved as ``manifest.json``)."""
    if not 1 <= num_verbs <= len(VERBS) or not 1 <= num_nouns <= len(NOUNS):
        raise ValueError(f"num_verbs must be in 1..{len(VERBS)} and num_nouns in 1..{len(NOUNS)}")
    if num_verbs * num_nouns < 5 and egoschema_questions:
        raise ValueError("EgoSchema needs at least 5 distinct verb x noun pairs for its 5 options")
    from lavila.data.relevancy import build_relevancy, save_relevancy

    _check_class_ids()
    out = Path(out)
    rng = np.random.default_rng(seed)
    verbs, nouns = list(VERBS)[:num_verbs], list(NOUNS)[:num_nouns]
    counter = iter(range(1, 1 << 30))

    # Ego4D: chunked videos + metadata pickle.
    ego_items = []
    for _ in range(ego4d_videos):
        uid = "".join(f"{b:02x}" for b in rng.integers(0, 256, 16))
        uid = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:32]}"
        actions = make_timeline(rng, video_sec, verbs, nouns, action_min_sec, action_max_sec)
        write_chunked_video(out / "ego4d" / "videos" / uid, actions, video_sec, chunk_len, fps, height, width,
                            seed * 100003 + next(counter))
        ego_items += [(uid, a.start, a.end, _ego4d_narrations(rng, a.verb, a.noun)) for a in actions]
    (out / "ego4d").mkdir(parents=True, exist_ok=True)
    with open(out / "ego4d" / "ego4d_train.pkl", "wb") as f:
        pickle.dump(ego_items, f, protocol=4)

    # EPIC-KITCHENS-100: chunked videos, official CSVs, sentence CSVs, relevancy pickles.
    ann = out / "ek100" / "epic-kitchens-100-annotations"
    ret = ann / "retrieval_annotations"
    (ret / "relevancy").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for split, count, participant in (("train", ek100_train_videos, "P01"), ("test", ek100_test_videos, "P02")):
        for v in range(count):
            vid = f"{participant}_{v + 1:02d}"
            actions = make_timeline(rng, video_sec, verbs, nouns, action_min_sec, action_max_sec)
            write_chunked_video(out / "ek100" / "videos" / vid, actions, video_sec, chunk_len, fps, height, width,
                                seed * 100003 + next(counter))
            splits[split] += _ek100_rows(actions, vid, fps, rng)
    train, test = pd.DataFrame(splits["train"]), pd.DataFrame(splits["test"])
    train.to_csv(ann / "EPIC_100_train.csv", index=False)
    test.to_csv(ann / "EPIC_100_validation.csv", index=False)
    _class_csv({k: VERBS[k] for k in verbs}, ann / "EPIC_100_verb_classes.csv")
    _class_csv({k: NOUNS[k] for k in nouns}, ann / "EPIC_100_noun_classes.csv")
    for split, df in (("train", train), ("test", test)):
        df.to_csv(ret / f"EPIC_100_retrieval_{split}.csv", index=False)
        sentences = _sentences(df)
        sentences.to_csv(ret / f"EPIC_100_retrieval_{split}_sentence.csv", index=False)
        relevancy_file = ret / "relevancy" / f"caption_relevancy_EPIC_100_retrieval_{split}.pkl"
        save_relevancy(build_relevancy(df, sentences), relevancy_file)

    # EgoSchema: one whole video per question, one action each; options are action descriptions.
    pairs = [(v, n) for v in verbs for n in nouns]
    questions, answers = [], {}
    for _ in range(egoschema_questions):
        uid = "".join(f"{b:02x}" for b in rng.integers(0, 256, 16))
        q_uid = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:32]}"
        options = [pairs[i] for i in rng.choice(len(pairs), 5, replace=False)]
        answer = int(rng.integers(5))
        verb, noun = options[answer]
        action = Action(verb, noun, 0.0, egoschema_sec, float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.4, 0.6)),
                        float(rng.uniform(0.2, 0.26)))
        write_video(out / "egoschema" / "videos" / f"{q_uid}.mp4",
                    render_frames([action], 0.0, egoschema_sec, fps, height, width, seed * 100003 + next(counter)),
                    fps)
        entry = {"q_uid": q_uid, "google_drive_id": "", "question": "What does C do with the object in the video?"}
        entry.update({f"option {i}": f"C {VERBS[v][2][0][2]} the {n}" for i, (v, n) in enumerate(options)})
        questions.append(entry)
        answers[q_uid] = answer
    (out / "egoschema").mkdir(parents=True, exist_ok=True)
    (out / "egoschema" / "questions.json").write_text(json.dumps(questions, indent=1))
    (out / "egoschema" / "answers.json").write_text(json.dumps(answers, indent=1))

    # LaViLa's extra benchmarks (own random stream: the datasets above stay as they were for a given seed)
    extra_rng = np.random.default_rng([seed, 18])
    egtea = write_egtea(out, extra_rng, pairs, egtea_clips, fps, height, width, seed * 100003 + 70001) \
        if egtea_clips else None
    charades = write_charades_ego(out, extra_rng, pairs, charades_test_videos, charades_train_videos, fps, height,
                                  width, seed * 100003 + 80001) if charades_test_videos else None
    egomcq = write_egomcq(out, extra_rng, ego_items, egomcq_questions) if egomcq_questions and ego_items else None

    manifest = {
        "seed": seed, "fps": fps, "height": height, "width": width, "chunk_len": chunk_len, "video_sec": video_sec,
        "verbs": verbs, "nouns": nouns,
        "ego4d": {"root": "ego4d/videos", "metadata": "ego4d/ego4d_train.pkl", "clips": len(ego_items)},
        "ek100": {"root": "ek100/videos", "annotations": str(ann.relative_to(out)),
                  "mir_train": str((ret / "EPIC_100_retrieval_train.csv").relative_to(out)),
                  "mir_test": str((ret / "EPIC_100_retrieval_test.csv").relative_to(out)),
                  "cls_train": str((ann / "EPIC_100_train.csv").relative_to(out)),
                  "cls_val": str((ann / "EPIC_100_validation.csv").relative_to(out)),
                  "train_clips": len(train), "test_clips": len(test)},
        "egoschema": {"root": "egoschema/videos", "questions": "egoschema/questions.json",
                      "answers": "egoschema/answers.json", "questions_count": len(questions)},
        "egtea": egtea, "charades_ego": charades, "egomcq": egomcq,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Generate small Ego4D / EK100 / EgoSchema-style datasets.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ego4d-videos", type=int, default=6)
    p.add_argument("--ek100-train-videos", type=int, default=4)
    p.add_argument("--ek100-test-videos", type=int, default=2)
    p.add_argument("--egoschema-questions", type=int, default=8)
    p.add_argument("--video-sec", type=float, default=30.0, help="length of each Ego4D / EK100 video")
    p.add_argument("--chunk-len", type=float, default=15.0, help="seconds per chunk file")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--num-verbs", type=int, default=4, help=f"verbs used, from {list(VERBS)}")
    p.add_argument("--num-nouns", type=int, default=5, help=f"nouns used, from {list(NOUNS)}")
    p.add_argument("--action-min-sec", type=float, default=2.0)
    p.add_argument("--action-max-sec", type=float, default=4.0)
    p.add_argument("--egoschema-sec", type=float, default=4.0)
    p.add_argument("--egtea-clips", type=int, default=6, help="EGTEA Gaze+ clips (half in test_split1)")
    p.add_argument("--charades-test-videos", type=int, default=3)
    p.add_argument("--charades-train-videos", type=int, default=2)
    p.add_argument("--egomcq-questions", type=int, default=4, help="EgoMCQ questions on the Ego4D clips")
    args = p.parse_args(argv)
    tic = time.perf_counter()
    kwargs = {k: v for k, v in vars(args).items() if k != "out"}
    manifest = generate(args.out, **kwargs)
    print(f"wrote {manifest['ego4d']['clips']} Ego4D clips, {manifest['ek100']['train_clips']}/"
          f"{manifest['ek100']['test_clips']} EK100 train/test clips, {manifest['egoschema']['questions_count']} "
          f"EgoSchema questions, {args.egtea_clips} EGTEA clips, {args.charades_test_videos}/"
          f"{args.charades_train_videos} Charades-Ego test/train videos, "
          f"{(manifest['egomcq'] or {}).get('questions', 0)} EgoMCQ questions to {args.out} in "
          f"{time.perf_counter() - tic:.1f}s")


if __name__ == "__main__":
    main()
