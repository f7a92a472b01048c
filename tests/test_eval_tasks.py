"""The evaluation task registry, and ``eval_zeroshot.py --tasks`` over all six tasks on generated data: every task's
metrics printed and saved, the protocol's frame count, and the plumbing check (embeddings that agree score 1.0)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from agreeing_model import AgreeingModel
from engine_helpers import benchmark_data, load_script, tiny_pretrained_checkpoint

from lavila.config import parse_args
from lavila.data.egoschema import option_prompts
from lavila.evaluation.tasks import TASKS, DataSettings, TaskConfigError, canonical_name, get_task, task_names

ALL = ["ek100_mir", "ek100_cls", "egtea", "charades_ego", "ego4d_mcq", "egoschema"]
FRAMES, CROP = 2, 32


def test_registry_names_aliases_and_metrics():
    assert task_names() == ALL
    assert {a: canonical_name(a) for a in ("mir", "cls", "egomcq")} == {"mir": "ek100_mir", "cls": "ek100_cls",
                                                                       "egomcq": "ego4d_mcq"}
    assert get_task("egomcq") is TASKS["ego4d_mcq"]
    tracked = {n: (t.metric, t.unit) for n, t in TASKS.items()}
    assert tracked == {"ek100_mir": ("avg_map", "fraction"), "ek100_cls": ("acc1", "percent"),
                       "egtea": ("mean_acc", "fraction"), "charades_ego": ("map", "fraction"),
                       "ego4d_mcq": ("intra_video", "fraction"), "egoschema": ("accuracy", "fraction")}
    assert task_names("classification") == ["ek100_cls", "egtea"]
    assert task_names("retrieval") == ["ek100_mir", "charades_ego"]
    with pytest.raises(TaskConfigError, match="unknown evaluation task 'kinetics'"):
        get_task("kinetics")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return benchmark_data(tmp_path_factory, "tasks_data", egoschema_questions=3)


def _argv(data, out_dir, *extra: str) -> list[str]:
    out, m = data
    ek, ann = m["ek100"], out / m["ek100"]["annotations"]
    return ["--device", "cpu", "--batch-size", "3", "--output-dir", str(out_dir), "--video-chunk-length",
            str(m["chunk_len"]), "--tasks", *ALL,
            "--mir-root", str(out / ek["root"]), "--mir-metadata", str(out / ek["mir_test"]),
            "--cls-metadata", str(out / ek["cls_val"]),
            "--cls-vocab-csvs", str(ann / "EPIC_100_train.csv"), str(ann / "EPIC_100_validation.csv"),
            "--egtea-root", str(out / m["egtea"]["root"]), "--egtea-metadata", str(out / m["egtea"]["test"]),
            "--egtea-num-clips", "2",
            "--charades-root", str(out / m["charades_ego"]["root"]),
            "--charades-metadata", str(out / m["charades_ego"]["test"]),
            "--egomcq-root", str(out / m["egomcq"]["root"]), "--egomcq-metadata", str(out / m["egomcq"]["metadata"]),
            "--egoschema-root", str(out / m["egoschema"]["root"]),
            "--egoschema-questions", str(out / m["egoschema"]["questions"]),
            "--egoschema-answers", str(out / m["egoschema"]["answers"]), *extra]


def test_eval_zeroshot_prints_and_saves_all_six_tasks(data, tmp_path_factory, tmp_path, capsys):
    checkpoint = tiny_pretrained_checkpoint(tmp_path_factory)
    assert load_script().main(_argv(data, tmp_path, "--resume", str(checkpoint))) == 0
    saved = json.loads((tmp_path / "zeroshot_metrics.json").read_text())
    keys = {"ek100_mir": {"avg_map", "avg_ndcg"}, "ek100_cls": {"acc1", "acc5", "mean_acc"},
            "egtea": {"acc1", "mean_acc", "mean_acc_present"}, "charades_ego": {"map", "map_present"},
            "ego4d_mcq": {"accuracy", "inter_video", "intra_video"}, "egoschema": {"accuracy", "questions"}}
    for name, expected in keys.items():
        assert expected <= set(saved[name]), name
    # EGTEA and Charades-Ego at their protocol's 16 frames (the 2-frame model's temporal embedding resized)
    assert saved["task_frames"] == {"ek100_mir": 2, "ek100_cls": 2, "egtea": 16, "charades_ego": 16,
                                    "ego4d_mcq": 2, "egoschema": 2}
    printed = capsys.readouterr().out
    assert "(ek100_cls: percent; other tasks: fractions)" in printed
    assert all(name in printed for name in ALL) and "intra_video" in printed


def _teach(model: AgreeingModel, data, argv: list[str]) -> None:
    """Show the model every evaluation item of the six tasks with its true concepts (built exactly as the script
    builds them), and teach every text its concepts."""
    out, m = data
    script = load_script()
    args = parse_args(script.build_parser(), argv)
    settings = DataSettings(FRAMES, CROP, "openai", 77, m["chunk_len"])

    def built(name: str):
        return TASKS[name].build(script.task_config(args, TASKS[name]), settings)

    ann = out / m["ek100"]["annotations"]
    for csv in (ann / "EPIC_100_train.csv", ann / "EPIC_100_validation.csv",
                out / m["ek100"]["mir_test"], ann / "retrieval_annotations" / "EPIC_100_retrieval_test_sentence.csv"):
        df = pd.read_csv(csv)
        if "verb_class" in df:
            for text, verb, noun in zip(df["narration"], df["verb_class"], df["noun_class"]):
                model.teach(str(text), [("ek100", int(verb), int(noun))])
    mir = built("ek100_mir").dataset
    for i, (frames, _) in enumerate(mir):
        model.show(frames, [("ek100", int(mir.clips["verb_class"].iat[i]), int(mir.clips["noun_class"].iat[i]))])
    cls = built("ek100_cls")
    for frames, label in cls.dataset:
        verb, noun = cls.extra["vocab"].actions[label].split(":")
        model.show(frames, [("ek100", int(verb), int(noun))])
    for name in ("egtea", "charades_ego"):
        ds = built(name).dataset
        for name_ in ds.classes:
            model.teach(name_, [(name, name_)])
        for views, target in ds:
            labels = [target] if name == "egtea" else target.nonzero().flatten().tolist()
            for view in (views if views.ndim == 5 else [views]):
                model.show(view, [(name, ds.classes[i]) for i in labels])
    mcq = built("ego4d_mcq").dataset
    for q, (_, clips, _, _) in zip(mcq.questions, mcq):
        model.teach(q["query"]["clip_text"], [("mcq", q["query"]["clip_text"])])
        for j, clip in enumerate(clips):
            model.show(clip, [("mcq", q["choices"][str(j)]["clip_text"])])
    schema = built("egoschema").dataset
    answers = json.loads((out / m["egoschema"]["answers"]).read_text())
    for q, (frames, _, _) in zip(schema.questions, schema):
        prompts = option_prompts(q)
        for prompt in prompts:
            model.teach(prompt, [("egoschema", prompt)])
        model.show(frames, [("egoschema", prompts[int(answers[q["q_uid"]])])])


def test_agreeing_model_scores_one_on_all_six_tasks(data, tmp_path, monkeypatch):
    """The plumbing check: through the real script, rows, columns, class order, views and answers line up."""
    argv = _argv(data, tmp_path, "--model", "CLIP_VITT16", "--clip-length", str(FRAMES))
    model = AgreeingModel(num_frames=FRAMES)
    _teach(model, data, argv)
    script = load_script()
    monkeypatch.setattr(script, "build_model", lambda args: (model.eval(), {
        "model": "agreeing", "num_frames": FRAMES, "crop": CROP, "norm": "openai", "context_length": 77}))
    assert script.main(argv) == 0
    saved = json.loads((tmp_path / "zeroshot_metrics.json").read_text())
    scores = {"ek100_mir": ("vis_map", "txt_map", "avg_map"), "ek100_cls": ("acc1",), "egtea": ("acc1", "mean_acc"),
              "charades_ego": ("map",), "ego4d_mcq": ("accuracy", "inter_video", "intra_video"),
              "egoschema": ("accuracy",)}
    got = {f"{name}.{k}": saved[name][k] for name, keys in scores.items() for k in keys}
    assert got == pytest.approx({key: 100.0 if key.startswith("ek100_cls") else 1.0 for key in got})
