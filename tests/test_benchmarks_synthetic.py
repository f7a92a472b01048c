"""EGTEA / Charades-Ego / EgoMCQ on generated data: the synthetic builder writes the real files and layouts, the
datasets read them, and a model whose video and text embeddings agree scores 1.0 on each benchmark (plumbing)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from agreeing_model import AgreeingModel, frames_key
from engine_helpers import benchmark_data
from torch import nn

from lavila.data.charades_ego import CharadesEgoClipDataset, CharadesEgoDataset, load_classes, load_videos
from lavila.data.egomcq import EgoMCQDataset, load_questions
from lavila.data.egtea import EgteaDataset, load_action_classes, load_split, window_starts
from lavila.evaluation import benchmarks, zeroshot

FRAMES, CROP = 4, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return benchmark_data(tmp_path_factory, "bench_data")


def _egtea(out, manifest, **kw):
    kw = {"num_frames": FRAMES, "stride": 2, "crop_size": CROP, **kw}
    return EgteaDataset(out / manifest["egtea"]["root"], out / manifest["egtea"]["test"], **kw)


def _charades(out, manifest):
    m = manifest["charades_ego"]
    return CharadesEgoDataset(out / m["root"], out / m["test"], num_frames=FRAMES, crop_size=CROP)


def _egomcq(out, manifest):
    return EgoMCQDataset(out / manifest["egomcq"]["root"], out / manifest["egomcq"]["metadata"], num_frames=FRAMES,
                         chunk_len=manifest["chunk_len"], crop_size=CROP)


# ---- the generated files, read back -------------------------------------------------------------------------------

def test_egtea_files_and_views(data):
    out, manifest = data
    names, index = load_action_classes(out / "egtea" / "action_idx.txt")
    assert names[0] == "take cup" and index == {i + 1: i for i in range(len(names))}  # "Take_cup 1"
    ds = _egtea(out, manifest, num_clips=2, num_crops=3)
    assert len(ds) == 2 and ds.classes == names
    views, label = ds[0]
    assert views.shape == (6, 3, FRAMES, CROP, CROP) and views.dtype == torch.float32
    assert 0 <= label < len(names)
    assert not torch.equal(views[0], views[1])  # left and centre crops of a 48x32 frame differ
    train = _egtea(out, manifest, is_training=True)
    frames, _ = train[0]
    assert frames.shape == (3, FRAMES, CROP, CROP)


def test_egtea_windows_and_short_clip_padding(data):
    out, manifest = data
    assert window_starts(100, 32, 3) == [0, 34, 68]
    assert window_starts(20, 32, 3) == [0, 0, 0]
    ds = _egtea(out, manifest, num_frames=16, stride=2, num_clips=2)
    assert ds.frame_ids(20)[:12] == list(range(0, 24, 2))  # ids >= 20 are padded with black frames
    views, _ = ds[0]
    assert views.shape == (2, 3, 16, CROP, CROP)
    long = _egtea(out, manifest, num_frames=32, stride=2)  # a 64-frame window: every generated clip is shorter
    frames, _ = long[0]
    black = long.transform(np.zeros((1, CROP, CROP, 3), np.uint8))[:, 0]  # normalised black frame (3, S, S)
    assert torch.allclose(frames[:, -1], black) and not torch.allclose(frames[:, 0], black)


def test_egtea_bad_lines_name_the_file_and_line(tmp_path):
    (tmp_path / "action_idx.txt").write_text("Take_cup 1\nPut cup\n")
    with pytest.raises(ValueError, match="action_idx.txt:2"):
        load_action_classes(tmp_path / "action_idx.txt")
    (tmp_path / "split.txt").write_text("OP01-R01-PastaSalad-1-2-F1-F2 1 1 1\nOP01-R01-PastaSalad-3-4-F1-F2 7 1 1\n")
    with pytest.raises(ValueError, match="split.txt:2: action index 7"):
        load_split(tmp_path / "split.txt", {1: 0})


def test_charades_ego_files_and_items(data):
    out, manifest = data
    m = manifest["charades_ego"]
    names, index = load_classes(out / m["classes"])
    assert names[0].split(" ")[0] in ("Taking", "Putting") and list(index)[:2] == ["c000", "c001"]
    videos = load_videos(out / m["test"], index)
    covered = sorted({c for _, _, labels in videos for c in labels})
    assert covered == list(range(len(names)))  # the generated test set has a positive for every class
    assert videos[-1][2] == []  # and a video without actions (an empty column 9), as some real ones
    ds = _charades(out, manifest)
    frames, target = ds[0]
    assert frames.shape == (3, FRAMES, CROP, CROP)
    assert target.shape == (len(names),) and target.sum() == 2 and torch.equal(target, ds.targets()[0])
    clips = CharadesEgoClipDataset(out / m["root"], out / m["train_clips"], num_frames=FRAMES, crop_size=CROP)
    frames, tokens = clips[0]
    assert frames.shape == (3, FRAMES, CROP, CROP) and tokens.shape == (77,)
    with open(out / m["train_clips"], "rb") as f:
        assert isinstance(pickle.load(f)[0], tuple)


def test_charades_csv_errors_name_the_line(tmp_path):
    header = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    (tmp_path / "bad.csv").write_text(header + "A,s,k,1,1,Yes,x,y,z,c000 0.0 1.0,3.0\nB,s,k,1,1,Yes,x,y,z,c009 0 1,3\n")
    with pytest.raises(ValueError, match="bad.csv:3: class c009"):
        load_videos(tmp_path / "bad.csv", {"c000": 0})
    (tmp_path / "bad2.csv").write_text(header + "A,s,k,1,1,Yes,x,y,z,c000 0.0,3.0\n")
    with pytest.raises(ValueError, match="bad2.csv:2: action 'c000 0.0'"):
        load_videos(tmp_path / "bad2.csv", {"c000": 0})


def test_egomcq_file_and_items(data):
    out, manifest = data
    questions = load_questions(out / manifest["egomcq"]["metadata"])
    assert len(questions) == 4 and {q["types"] for q in questions} == {1, 2}
    for q in questions:
        videos = {c["video_uid"] for c in q["choices"].values()}
        assert (len(videos) == 1) == (q["types"] == 2)  # intra: one video; inter: the query's and others
        assert q["choices"][str(q["answer"])]["clip_text"] == q["query"]["clip_text"]
    ds = _egomcq(out, manifest)
    query, clips, answer, qtype = ds[0]
    assert query.shape == (77,) and clips.shape == (5, 3, FRAMES, CROP, CROP)
    assert (answer, qtype) == (questions[0]["answer"], questions[0]["types"])


def test_egomcq_structure_errors(tmp_path):
    path = tmp_path / "egomcq.json"
    path.write_text(json.dumps({"0": {"answer": 0, "types": 3, "query": {"clip_text": "x"},
                                      "choices": {"0": {"video_uid": "v", "clip_start": 0, "clip_end": 1}}}}))
    with pytest.raises(ValueError, match="question 0: types 3"):
        load_questions(path)


# ---- plumbing: embeddings that agree score 1.0 ------------------------------------------------------------------

def test_agreeing_model_scores_one_on_egtea_with_views(data):
    out, manifest = data
    ds = _egtea(out, manifest, num_clips=2, num_crops=3)
    model = AgreeingModel(ds.classes)
    for views, label in ds:
        for view in views:
            model.show(view, [ds.classes[label]])
    classes = benchmarks.benchmark_class_embeddings(model, ds.classes, "cpu")
    metrics, scores = benchmarks.evaluate_egtea(model, zeroshot.sharded_loader(ds, 1), classes, "cpu")
    assert metrics == pytest.approx({"acc1": 1.0, "mean_acc": 1.0, "mean_acc_present": 1.0})
    assert scores.shape == (len(ds), len(ds.classes))
    np.testing.assert_allclose(scores.sum(1), 1.0, rtol=1e-5)  # several views: softmax of the max-pooled cosines


def test_agreeing_model_scores_one_on_charades_ego(data):
    out, manifest = data
    ds = _charades(out, manifest)
    model = AgreeingModel(ds.classes)
    for frames, target in ds:
        model.show(frames, [ds.classes[i] for i in torch.nonzero(target).flatten().tolist()])
    classes = benchmarks.benchmark_class_embeddings(model, ds.classes, "cpu")
    metrics, _ = benchmarks.evaluate_charades_ego(model, zeroshot.sharded_loader(ds, 2), classes, "cpu")
    assert metrics["map"] == pytest.approx(1.0) and metrics["classes_without_positive"] == 0
    wrong = classes.flip(0)  # class embeddings in the wrong order must be visible
    bad, _ = benchmarks.evaluate_charades_ego(model, zeroshot.sharded_loader(ds, 2), wrong, "cpu")
    assert bad["map"] < 0.9


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_agreeing_model_scores_one_on_egomcq(data, similarity):
    out, manifest = data
    ds = _egomcq(out, manifest)
    model = AgreeingModel([c["clip_text"] for q in ds.questions for c in q["choices"].values()])
    answer_keys = []
    for index, (_, clips, answer, _) in enumerate(ds):
        for j, clip in enumerate(clips):
            model.show(clip, [ds.questions[index]["choices"][str(j)]["clip_text"]], norm=1.0 + j)
        answer_keys.append(frames_key(clips[answer]))
    metrics, scores = benchmarks.evaluate_egomcq(model, zeroshot.sharded_loader(ds, 3), "cpu", similarity)
    assert metrics["accuracy"] == 1.0 and metrics["inter_video"] == 1.0 and metrics["intra_video"] == 1.0
    answers = np.array(ds.answers)
    norms = np.array([model.norms[k] for k in answer_keys])
    expected = norms if similarity == "dot" else np.ones(len(ds))  # dot keeps the clip norms
    assert similarity == "cosine" or (norms != 1).any()
    np.testing.assert_allclose(scores[np.arange(len(ds)), answers], expected, rtol=1e-6)


def test_egomcq_dot_and_cosine_rank_differently():
    class Fixed(nn.Module):
        def visual(self, frames):
            return frames[:, 0, 0, 0, :2]  # (x, y) stored in the first pixels

        def textual(self, tokens):
            return torch.tensor([[1.0, 0.0]]).expand(len(tokens), 2)

        def encode_video(self, frames):
            return nn.functional.normalize(self.visual(frames), dim=-1)

        def encode_text(self, tokens):
            return nn.functional.normalize(self.textual(tokens), dim=-1)

    clips = torch.zeros(2, 3, 1, 1, 2)
    clips[0, 0, 0, 0] = torch.tensor([1.0, 0.1])   # candidate 0: well aligned, small
    clips[1, 0, 0, 0] = torch.tensor([3.0, 3.0])   # candidate 1: less aligned, large

    class One(torch.utils.data.Dataset):
        questions = [{"choices": {"0": {}, "1": {}}}]

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.zeros(77, dtype=torch.long), clips, 0, 1

    loader = zeroshot.sharded_loader(One(), 1)
    assert benchmarks.evaluate_egomcq(Fixed(), loader, "cpu", "cosine")[0]["accuracy"] == 1.0
    assert benchmarks.evaluate_egomcq(Fixed(), loader, "cpu", "dot")[0]["accuracy"] == 0.0
    with pytest.raises(ValueError, match="cosine"):
        benchmarks.evaluate_egomcq(Fixed(), loader, "cpu", "l2")


def test_a_tiny_clip_runs_the_three_evaluations(data):
    from lavila.models import create_model

    out, manifest = data
    torch.manual_seed(0)
    model = create_model("CLIP_VITT16", embed_dim=32, depth=1, num_heads=2, text_width=32, text_layers=1,
                         text_heads=2, img_size=CROP, project_embed_dim=16, num_frames=FRAMES).eval()
    egtea = _egtea(out, manifest, num_clips=2, num_crops=3)
    classes = benchmarks.benchmark_class_embeddings(model, egtea.classes, "cpu", benchmarks.LAVILA_TEMPLATES)
    metrics, scores = benchmarks.evaluate_egtea(model, zeroshot.sharded_loader(egtea, 2), classes, "cpu")
    assert scores.shape == (len(egtea), len(egtea.classes)) and 0 <= metrics["acc1"] <= 1
    charades = _charades(out, manifest)
    classes = benchmarks.benchmark_class_embeddings(model, charades.classes, "cpu")
    metrics, scores = benchmarks.evaluate_charades_ego(model, zeroshot.sharded_loader(charades, 2), classes, "cpu")
    assert np.isfinite(scores).all() and 0 < metrics["map"] <= 1
    metrics, scores = benchmarks.evaluate_egomcq(model, zeroshot.sharded_loader(_egomcq(out, manifest), 2), "cpu",
                                                 "dot")
    assert scores.shape == (4, 5) and 0 <= metrics["accuracy"] <= 1
