"""Generated egocentric-like datasets in the real Ego4D / EPIC-KITCHENS-100 / EgoSchema layouts.

Each video is a timeline of actions, each a verb x noun pair from the real EK100 class lists drawn as a coloured
shape moving in the verb's way (``synthetic_video.py``: vocabulary, rendering, mp4 writer). Narrations describe
exactly that ("#C C takes the cup", "take cup"), so a small model can learn retrieval. LaViLa's extra benchmarks
(EGTEA, Charades-Ego, EgoMCQ) are written by ``synthetic_benchmarks.py``.

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
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lavila.data.synthetic_benchmarks import write_charades_ego, write_egomcq, write_egtea
from lavila.data.synthetic_video import (
    NOUNS,
    VERBS,
    Action,
    check_class_ids,
    make_timeline,
    render_frames,
    write_chunked_video,
    write_video,
)

__all__ = ["generate", "main"]


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

    check_class_ids()
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
