"""The four datasets on generated data, through DataLoaders with workers; bad-sample policy; label maps."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lavila.data.ego4d import Ego4DPretrainDataset
from lavila.data.egoschema import EgoSchemaDataset, option_prompts
from lavila.data.ek100 import ActionVocabulary, EK100CLSDataset, EK100MIRDataset, zeroshot_class_texts
from lavila.data.loader import SampleSkippedError, build_loader, report_skips
from lavila.data.synthetic import generate
from lavila.data.tokenizer import tokenize
from lavila.data.video import VideoDecodeError

T, S = 4, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, seed=0, ego4d_videos=2, ek100_train_videos=2, ek100_test_videos=1, egoschema_questions=4,
             video_sec=20.0, fps=10.0, height=48, width=64)
    return out


def ann(data: Path) -> Path:
    return data / "ek100" / "epic-kitchens-100-annotations"


def run_loader(ds, batch_size=4, **kw):
    loader = build_loader(ds, batch_size=batch_size, num_workers=2, **kw)
    batches = [b for b in loader if b is not None]
    return loader, batches


def test_ego4d_pretrain_through_loader(data):
    ds = Ego4DPretrainDataset(data / "ego4d" / "videos", data / "ego4d" / "ego4d_train.pkl", num_frames=T,
                              crop_size=S)
    loader, batches = run_loader(ds, shuffle=True)
    frames, tokens = batches[0]
    assert frames.shape == (4, 3, T, S, S) and frames.dtype == torch.float32
    assert tokens.shape == (4, 77) and tokens.dtype == torch.long
    assert sum(len(b[0]) for b in batches) == len(ds)
    assert report_skips(loader, 0) == {"skipped": 0, "first_paths": []}


def test_ego4d_narration_lists_are_sampled_and_aux_concatenated(data, tmp_path):
    aux = tmp_path / "aux.pkl"
    vid = pickle.load(open(data / "ego4d" / "ego4d_train.pkl", "rb"))[0][0]
    pickle.dump([(vid, 1.0, 2.0, "#C C a single string"), (vid, 2.0, 3.0, ["one", "two"])], open(aux, "wb"))
    ds = Ego4DPretrainDataset(data / "ego4d" / "videos", data / "ego4d" / "ego4d_train.pkl", metadata_aux=[aux],
                              num_frames=T, crop_size=S)
    assert ds.narration(len(ds) - 2) == "#C C a single string"
    assert {ds.narration(len(ds) - 1) for _ in range(40)} == {"one", "two"}


def test_ek100_mir_train_and_test(data):
    ret = ann(data) / "retrieval_annotations"
    train = EK100MIRDataset(data / "ek100" / "videos", ret / "EPIC_100_retrieval_train.csv", is_training=True,
                            num_frames=T, crop_size=S)
    _, batches = run_loader(train, shuffle=True)
    frames, tokens, relevancy = batches[0]
    assert frames.shape == (4, 3, T, S, S) and tokens.shape == (4, 77)
    assert relevancy.dtype == torch.float32 and (relevancy > 0.1).all() and (relevancy <= 1).all()
    test = EK100MIRDataset(data / "ek100" / "videos", ret / "EPIC_100_retrieval_test.csv", is_training=False,
                           num_frames=T, crop_size=S)
    _, batches = run_loader(test)
    frames, tokens = batches[0]
    assert torch.equal(tokens[0], tokenize(test.clips["narration"].iloc[0]))
    rows = test.sentence_clip_rows()
    assert len(rows) == len(test.sentences)
    assert (test.clips["narration"].to_numpy()[rows] == test.sentences["narration"].to_numpy()).all()


def test_ek100_mir_clip_without_positive_is_dropped_with_count(data, tmp_path):
    clips = pd.read_csv(ann(data) / "retrieval_annotations" / "EPIC_100_retrieval_train.csv")
    lonely = clips.iloc[[0]].copy()
    lonely["narration_id"], lonely["verb_class"], lonely["noun_class"] = "X_0", 96, 299
    lonely["all_noun_classes"] = "[299]"
    clips = pd.concat([clips, lonely], ignore_index=True)
    csv = tmp_path / "EPIC_100_retrieval_train.csv"
    clips.to_csv(csv, index=False)
    # the sentences stay those of the generated split: none shares a verb or noun class with the added clip
    sentences = pd.read_csv(ann(data) / "retrieval_annotations" / "EPIC_100_retrieval_train_sentence.csv")
    sentences.to_csv(tmp_path / "EPIC_100_retrieval_train_sentence.csv", index=False)
    ds = EK100MIRDataset(data / "ek100" / "videos", csv, is_training=True, num_frames=T, crop_size=S)
    assert ds.num_without_positive == 1 and len(ds) == len(clips) - 1
    assert len(clips) - 1 not in set(ds.rows.tolist())


def test_ek100_cls_through_loader_and_vocab_roundtrip(data, tmp_path):
    vocab = ActionVocabulary.from_csvs([ann(data) / "EPIC_100_train.csv", ann(data) / "EPIC_100_validation.csv"])
    vocab.save(tmp_path / "actions.json")
    loaded = ActionVocabulary.load(tmp_path / "actions.json")
    assert loaded.actions == vocab.actions
    ds = EK100CLSDataset(data / "ek100" / "videos", ann(data) / "EPIC_100_validation.csv", tmp_path / "actions.json",
                         num_frames=T, crop_size=S)
    _, batches = run_loader(ds)
    frames, labels = batches[0]
    assert frames.shape == (4, 3, T, S, S) and labels.dtype == torch.long
    first = ds.clips.iloc[0]
    assert vocab.actions[int(labels[0])] == f"{first['verb_class']}:{first['noun_class']}"


def test_action_vocabulary_sorts_as_strings():
    df = pd.DataFrame({"verb_class": [2, 10, 1, 2], "noun_class": [5, 1, 30, 5]})
    vocab = ActionVocabulary.from_frames([df])
    assert vocab.actions == ["10:1", "1:30", "2:5"]
    assert vocab.label(2, 5) == 2 and vocab.act2verb.tolist() == [10, 1, 2] and vocab.act2noun.tolist() == [1, 30, 5]
    with pytest.raises(KeyError, match="not in the vocabulary"):
        vocab.label(3, 3)


def test_zeroshot_class_texts_from_narrations():
    df = pd.DataFrame({"verb_class": [0, 0, 0, 1], "noun_class": [2, 2, 2, 2],
                       "narration": ["take plate", "pick up plate", "take plate", "put plate"]})
    vocab = ActionVocabulary.from_frames([df])
    assert zeroshot_class_texts(vocab, [df]) == [["take plate", "pick up plate"], ["put plate"]]
    templated = zeroshot_class_texts(vocab, [df], templates=("#C C {}", "#C {}"))
    assert templated[1] == ["#C C put plate", "#C put plate"]
    bigger = ActionVocabulary(["0:2", "1:2", "3:7"])
    with pytest.raises(ValueError, match="no narration"):
        zeroshot_class_texts(bigger, [df])
    names = zeroshot_class_texts(bigger, [df], verb_names=["take", "put", "wash", "open"],
                                 noun_names=[f"n{i}" for i in range(7)] + ["board:chopping"])
    assert names[2] == ["open board chopping"]


def test_egoschema_through_loader(data):
    ds = EgoSchemaDataset(data / "egoschema" / "videos", data / "egoschema" / "questions.json", num_frames=T,
                          crop_size=S)
    _, batches = run_loader(ds, batch_size=2)
    frames, options, index = batches[0]
    assert frames.shape == (2, 3, T, S, S) and options.shape == (2, 5, 77) and index.tolist() == [0, 1]
    prompts = option_prompts(ds.questions[0])
    assert prompts[0] == f"Is it '{ds.questions[0]['option 0'].lower()}'"
    assert torch.equal(options[0], tokenize(prompts))


def _break_videos(data: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the Ego4D root where some videos are empty, truncated, corrupt or missing."""
    import shutil

    root = tmp_path / "videos"
    shutil.copytree(data / "ego4d" / "videos", root)
    items = pickle.load(open(data / "ego4d" / "ego4d_train.pkl", "rb"))
    good = items[0][0]
    chunk = (root / good / "0000.mp4").read_bytes()
    broken = []
    payloads = {"empty": b"", "truncated": chunk[: len(chunk) // 3], "corrupt": bytes(range(256)) * 80}
    for name, payload in payloads.items():
        (root / name).mkdir()
        (root / name / "0000.mp4").write_bytes(payload)
        broken.append(name)
    meta = [(good, 1.0, 2.5, "#C C ok")] * 5 + [(n, 1.0, 2.5, "#C C broken") for n in broken + ["missing"]]
    pickle.dump(meta, open(tmp_path / "meta.pkl", "wb"))
    return root, broken + ["missing"]


def test_bad_training_samples_are_skipped_and_counted(data, tmp_path):
    root, broken = _break_videos(data, tmp_path)
    ds = Ego4DPretrainDataset(root, tmp_path / "meta.pkl", num_frames=T, crop_size=S)
    loader, batches = run_loader(ds, batch_size=3)
    assert sum(len(b[0]) for b in batches) == 5
    report = report_skips(loader, epoch=0)
    assert report["skipped"] == 4 and len(report["first_paths"]) == 4
    for name in broken:
        assert any(f"{root}/{name}" in p for p in report["first_paths"])
    assert report_skips(loader, epoch=1)["skipped"] == 0  # reset per epoch


def test_bad_training_samples_can_be_made_to_raise(data, tmp_path):
    root, _ = _break_videos(data, tmp_path)
    ds = Ego4DPretrainDataset(root, tmp_path / "meta.pkl", num_frames=T, crop_size=S, on_error="raise")
    with pytest.raises(VideoDecodeError, match="empty"):
        ds[5]
    ds = Ego4DPretrainDataset(root, tmp_path / "meta.pkl", num_frames=T, crop_size=S)
    loader = build_loader(ds, batch_size=9, num_workers=0, on_error="raise")
    with pytest.raises(SampleSkippedError):
        next(iter(loader))


def test_bad_evaluation_sample_raises_naming_the_path(data, tmp_path):
    import shutil

    root = tmp_path / "videos"
    shutil.copytree(data / "ek100" / "videos", root)
    ret = ann(data) / "retrieval_annotations"
    vid = pd.read_csv(ret / "EPIC_100_retrieval_test.csv")["video_id"].iloc[0]
    (root / vid / "0000.mp4").write_bytes(b"\x00" * 5000)
    ds = EK100MIRDataset(root, ret / "EPIC_100_retrieval_test.csv", is_training=False, num_frames=T, crop_size=S)
    from lavila.data.video import VideoDecodeError

    with pytest.raises(VideoDecodeError, match=f"cannot decode video {root}/{vid}/0000.mp4"):
        run_loader(ds)  # re-raised from a DataLoader worker with its type kept


def test_distributed_sampler_shards(data):
    ds = EK100MIRDataset(data / "ek100" / "videos", ann(data) / "retrieval_annotations" /
                         "EPIC_100_retrieval_test.csv", num_frames=T, crop_size=S)
    loaders = [build_loader(ds, batch_size=2, distributed=True, rank=r, world_size=2) for r in range(2)]
    shards = [list(iter(loader.sampler)) for loader in loaders]
    assert len(shards[0]) == len(shards[1]) == int(np.ceil(len(ds) / 2))
    assert set(shards[0]) | set(shards[1]) == set(range(len(ds)))


def test_fused_decode_resize_matches_crop_then_resize(data):
    """After the first clip of a video, frames are decoded pre-scaled (CropPlan); the result matches the plain
    crop + antialiased resize path to within interpolation differences."""
    ret = ann(data) / "retrieval_annotations"
    kw = dict(is_training=False, num_frames=T, crop_size=40, norm="openai")
    fused = EK100MIRDataset(data / "ek100" / "videos", ret / "EPIC_100_retrieval_test.csv", fused_resize=True,
                            **kw)
    plain = EK100MIRDataset(data / "ek100" / "videos", ret / "EPIC_100_retrieval_test.csv", **kw)
    fused[0]  # learns the frame size
    a, b = fused[1][0], plain[1][0]
    assert a.shape == b.shape == (3, T, 40, 40)
    assert fused._frame_sizes and not plain._frame_sizes and not torch.equal(a, b)  # really two paths
    assert (a - b).abs().mean() < 0.08  # normalised units (~5 grey levels at this tiny size)
    plan = fused.transform.plan(48, 64)
    assert (plan.scaled_h, plan.scaled_w, plan.top, plan.left) == (40, 53, 0, 7)


def test_datasets_default_to_the_engines_resize_path():
    """The datasets' default resize path is the engines' (``--fused-decode-crop`` off), so eval_zeroshot.py, the
    engines and benchmarks/bench_data.py decode the same way unless asked otherwise."""
    import inspect

    from lavila.data.clips import ClipDataset
    from lavila.train.loop import parse_engine_args
    from lavila.train.pretrain import PretrainEngine

    assert parse_engine_args(PretrainEngine(), []).fused_decode_crop is False
    for cls in (ClipDataset, Ego4DPretrainDataset, EK100MIRDataset, EK100CLSDataset, EgoSchemaDataset):
        assert inspect.signature(cls).parameters["fused_resize"].default is False, cls.__name__
