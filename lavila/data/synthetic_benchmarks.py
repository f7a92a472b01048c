"""Generated data for LaViLa's extra benchmarks, in their real files and layouts: EGTEA Gaze+ (``write_egtea``),
Charades-Ego (``write_charades_ego``) and EgoMCQ over the generated Ego4D clips (``write_egomcq``);
``synthetic.generate`` calls them (layouts in its module docstring).
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from lavila.data.synthetic_video import NOUNS, VERBS, Action, render_frames, write_video

__all__ = ["CHARADES_HEADER", "write_egtea", "write_charades_ego", "write_egomcq"]

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
