"""Zero-shot evaluation: sharding, sentence mapping, an oracle model scoring 1.0 mAP, eval_zeroshot.py end to end
on generated data, and 2-process (gloo) evaluation giving the same numbers as one process."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import load_script
from torch import nn

from lavila.data.relevancy import build_relevancy, parse_class_list
from lavila.data.tokenizer import tokenize
from lavila.evaluation import zeroshot

TINY = ["embed_dim=32", "depth=1", "num_heads=2", "text_width=32", "text_layers=1", "text_heads=2", "img_size=32",
        "project_embed_dim=16", "num_frames=2"]


def _load_script():
    return load_script("eval_zeroshot")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- units ------------------------------------------------------------------------------------------------------

def test_sharded_batches_cover_every_index_in_single_process_batches():
    single = zeroshot.ShardedBatchSampler(11, 3).batches()
    assert single == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    shards = [zeroshot.ShardedBatchSampler(11, 3, rank, 2) for rank in range(2)]
    assert shards[0].batches() == [[0, 1, 2], [6, 7, 8]] and shards[1].batches() == [[3, 4, 5], [9, 10]]
    assert sorted(shards[0].indices() + shards[1].indices()) == list(range(11))


def test_sentence_columns_uses_narration_ids():
    cols = zeroshot.sentence_columns(["a", "b", "c"], ["c", "a"])
    assert cols.tolist() == [2, 0]
    with pytest.raises(ValueError, match="not clip narration_ids"):
        zeroshot.sentence_columns(["a"], ["b"])


def _class_key(verb, nouns) -> tuple:
    return int(verb), tuple(sorted(parse_class_list(nouns)))


class OracleCLIP(nn.Module):
    """Video and text embeddings that agree: one-hot of the (verb, noun set) class. A clip is identified by its row
    index stamped into the first pixel; a text by its tokens."""

    def __init__(self, clips: pd.DataFrame, context_length: int = 77) -> None:
        super().__init__()
        keys = [_class_key(v, n) for v, n in zip(clips["verb_class"], clips["all_noun_classes"])]
        index = {k: i for i, k in enumerate(sorted(set(keys)))}
        self.row_class = torch.tensor([index[k] for k in keys])
        self.text_class: dict[tuple, int] = {}
        for text, key in zip(clips["narration"].astype(str), keys):
            token_key = tuple(tokenize(text, context_length).tolist())
            assert self.text_class.setdefault(token_key, index[key]) == index[key], "same text, different classes"
        self.dim = len(index)
        self.config = {"name": "oracle", "project_embed_dim": self.dim, "context_length": context_length}
        self.num_frames = 2
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        rows = frames[:, 0, 0, 0, 0].round().long()
        return nn.functional.one_hot(self.row_class[rows], self.dim).float()

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor([self.text_class[tuple(t.tolist())] for t in tokens])
        return nn.functional.one_hot(ids, self.dim).float()


class StampedMIR(torch.utils.data.Dataset):
    def __init__(self, clips: pd.DataFrame) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        frames = torch.zeros(3, 2, 4, 4)
        frames[0, 0, 0, 0] = i
        return frames, tokenize(str(self.clips["narration"].iat[i]))


def test_oracle_model_scores_one_map_with_shuffled_sentences():
    rng = np.random.default_rng(0)
    verbs, nouns = rng.integers(0, 3, 40), rng.integers(0, 4, 40)
    clips = pd.DataFrame({"narration_id": [f"id{i}" for i in range(40)], "verb_class": verbs,
                          "all_noun_classes": [f"[{n}]" for n in nouns],
                          "narration": [f"verb{v} noun{n}" for v, n in zip(verbs, nouns)]})
    first = clips.drop_duplicates("narration")
    sentences = first[["narration_id", "narration"]].sample(frac=1.0, random_state=0)  # columns in another order
    relevancy = build_relevancy(clips, sentences)
    model = OracleCLIP(clips)
    loader = zeroshot.sharded_loader(StampedMIR(clips), batch_size=7)
    columns = zeroshot.sentence_columns(clips["narration_id"], sentences["narration_id"])
    metrics, sim = zeroshot.evaluate_mir(model, loader, relevancy, columns, "cpu")
    assert sim.shape == relevancy.shape
    assert metrics["vis_map"] == pytest.approx(1.0) and metrics["txt_map"] == pytest.approx(1.0)
    # a wrong column order must be visible
    bad, _ = zeroshot.evaluate_mir(model, loader, relevancy, columns[::-1].copy(), "cpu")
    assert bad["avg_map"] < 0.9


# ---- eval_zeroshot.py on generated data ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from lavila.data.synthetic import generate

    out = tmp_path_factory.mktemp("zs_data")
    generate(out, seed=3, ego4d_videos=0, ek100_train_videos=1, ek100_test_videos=1, egoschema_questions=3,
             video_sec=16.0, height=32, width=48, num_verbs=3, num_nouns=3)
    return out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from lavila.models import create_model
    from lavila.utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    overrides = {k: int(v) for k, v in (item.split("=") for item in TINY)}
    model = create_model("CLIP_VITT16", **overrides)
    path = tmp_path_factory.mktemp("zs_ckpt") / "tiny.pt"
    save_checkpoint({"state_dict": model.state_dict(), "model_name": "CLIP_VITT16",
                     "model_config": dict(model.config), "args": {"norm_style": "openai"}}, path)
    return path


def _argv(data: Path, out: Path, checkpoint: Path) -> list[str]:
    ann = data / "ek100" / "epic-kitchens-100-annotations"
    return ["--resume", str(checkpoint), "--device", "cpu", "--batch-size", "3", "--output-dir", str(out),
            "--mir-root", str(data / "ek100" / "videos"),
            "--mir-metadata", str(ann / "retrieval_annotations" / "EPIC_100_retrieval_test.csv"),
            "--cls-metadata", str(ann / "EPIC_100_validation.csv"),
            "--cls-vocab-csvs", str(ann / "EPIC_100_train.csv"), str(ann / "EPIC_100_validation.csv"),
            "--egoschema-root", str(data / "egoschema" / "videos"),
            "--egoschema-questions", str(data / "egoschema" / "questions.json"),
            "--egoschema-answers", str(data / "egoschema" / "answers.json")]


@pytest.fixture(scope="module")
def single_process_run(synthetic, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("zs_out1")
    _load_script().main(_argv(synthetic, out, tiny_checkpoint) + ["--save-similarity"])
    return out


def test_eval_zeroshot_prints_and_saves_all_three(single_process_run, synthetic):
    metrics = json.loads((single_process_run / "zeroshot_metrics.json").read_text())
    assert set(metrics["ek100_mir"]) == {"vis_map", "txt_map", "avg_map", "vis_ndcg", "txt_ndcg", "avg_ndcg"}
    assert all(0 < v <= 1 for v in metrics["ek100_mir"].values())
    assert {"acc1", "acc5", "mean_acc", "mean_acc_cm", "verb_acc1", "noun_acc1"} <= set(metrics["ek100_cls"])
    assert metrics["egoschema"]["questions"] == 3 and 0 <= metrics["egoschema"]["accuracy"] <= 1
    assert metrics["num_frames"] == 2 and metrics["crop"] == 32  # from the checkpoint's stored config
    sim = np.load(single_process_run / "mir_similarity.npy")
    ret = synthetic / "ek100" / "epic-kitchens-100-annotations" / "retrieval_annotations"
    clips = pd.read_csv(ret / "EPIC_100_retrieval_test.csv")
    sentences = pd.read_csv(ret / "EPIC_100_retrieval_test_sentence.csv")
    assert sim.shape == (len(clips), len(sentences))
    submission = json.loads(next(single_process_run.glob("egoschema_predictions_f2.json")).read_text())
    assert len(submission) == 3 and all(0 <= v < 5 for v in submission.values())


def test_eval_zeroshot_table_is_printed(synthetic, tiny_checkpoint, tmp_path, capsys):
    _load_script().main(_argv(synthetic, tmp_path, tiny_checkpoint) + ["--tasks", "egoschema"])
    printed = capsys.readouterr().out
    assert "egoschema" in printed and "accuracy" in printed and "metrics:" in printed


def test_eval_zeroshot_oracle_embeddings_score_one(synthetic, tiny_checkpoint, tmp_path, monkeypatch):
    """Plumbing of the real script: row/column order and sentence mapping give 1.0 mAP for agreeing embeddings."""
    from lavila.data.ek100 import EK100MIRDataset

    script = _load_script()
    ann = synthetic / "ek100" / "epic-kitchens-100-annotations" / "retrieval_annotations"
    clips = pd.read_csv(ann / "EPIC_100_retrieval_test.csv")
    original = EK100MIRDataset.__getitem__

    def stamped(self, index):
        frames, tokens = original(self, index)
        frames = frames.clone()
        frames[0, 0, 0, 0] = index
        return frames, tokens

    monkeypatch.setattr(EK100MIRDataset, "__getitem__", stamped)
    monkeypatch.setattr(script, "build_model", lambda args: (OracleCLIP(clips).eval(), {
        "model": "oracle", "num_frames": 2, "crop": 32, "norm": "openai", "context_length": 77}))
    script.main(_argv(synthetic, tmp_path, Path("unused.pt")) + ["--tasks", "mir"])
    metrics = json.loads((tmp_path / "zeroshot_metrics.json").read_text())["ek100_mir"]
    assert metrics["vis_map"] == pytest.approx(1.0) and metrics["txt_map"] == pytest.approx(1.0)


def test_eval_zeroshot_bad_flags(tmp_path, capsys):
    script = _load_script()
    assert script.main(["--model", "CLIP_VITT16", "--output-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: nothing to evaluate")


def _distributed_worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    _load_script().main(argv)


def test_two_process_evaluation_matches_one_process(synthetic, tiny_checkpoint, single_process_run, tmp_path):
    argv = _argv(synthetic, tmp_path, tiny_checkpoint)
    mp.spawn(_distributed_worker, args=(2, _free_port(), argv), nprocs=2, join=True)
    one = json.loads((single_process_run / "zeroshot_metrics.json").read_text())
    two = json.loads((tmp_path / "zeroshot_metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    for task in ("ek100_mir", "ek100_cls", "egoschema"):
        assert two[task] == pytest.approx(one[task], abs=1e-6), task
    assert json.loads((tmp_path / "egoschema_predictions_f2.json").read_text()) == json.loads(
        (single_process_run / "egoschema_predictions_f2.json").read_text())
