"""Flat Ego4D metadata (issue 19): item-by-item equality with the old list-of-tuples path, the cache file (reuse,
rebuild when stale / truncated / corrupt, read-only folders), and restricted unpickling of the source."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import synthetic_root

from lavila.data import metadata as meta_mod
from lavila.data.clips import ClipDataset
from lavila.data.ego4d import Ego4DPretrainDataset, load_ego4d_clips
from lavila.data.metadata import TextTable, cache_paths
from lavila.data.tokenizer import tokenize
from lavila.train.sampler import PerSampleSeededDataset

T, S = 4, 32


class OldPath:
    """The pre-issue-19 behaviour, written out independently: a plain list from the pickle, the item's times through
    ``float``, a narration string as is and one choice of a list drawn with ``torch.randint``."""

    def __init__(self, *paths: Path) -> None:
        self.items = [it for p in paths for it in pickle.load(open(p, "rb"))]

    def narration(self, index: int) -> str:
        text = self.items[index][3]
        return text if isinstance(text, str) else text[int(torch.randint(len(text), (1,)).item())]


def _mixed_items(rng: np.random.Generator, n: int, uids: list[str]) -> list:
    """Every form the old path accepted: str / list / tuple narrations (1-3 choices), extra fields, int, float and
    numpy times, non-ASCII and empty texts, a lone surrogate and a NUL inside a text."""
    forms = ["plain", "list", "tuple", "extra", "ints", "numpy"]
    items = []
    for i in range(n):
        uid = uids[int(rng.integers(len(uids)))]
        start = float(rng.uniform(0, 100))
        end = start + float(rng.uniform(0.5, 3))
        k = int(rng.integers(1, 4))
        texts = [f"#C C takes the cup {i}.{j} " + "é" * int(rng.integers(3)) for j in range(k)]
        form = forms[i % len(forms)]
        if form == "plain":
            items.append((uid, start, end, texts[0]))
        elif form == "list":
            items.append([uid, start, end, texts])
        elif form == "tuple":
            items.append((uid, start, end, tuple(texts)))
        elif form == "extra":
            items.append((uid, start, end, texts, {"source": "narrator"}, 7))
        elif form == "ints":
            items.append((uid, int(start), int(end) + 1, texts[0]))
        else:
            items.append((uid, np.float64(start), np.float32(end), texts))
    items[1] = (uids[0], 1.0, 2.0, ["", "雨の日 \ud800", "a\x00b"])
    return items


@pytest.fixture()
def pickles(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    uids = [f"uid-{v:03d}-ü" for v in range(7)]
    main, aux = tmp_path / "meta" / "main.pkl", tmp_path / "meta" / "aux.pkl"
    main.parent.mkdir()
    pickle.dump(_mixed_items(rng, 300, uids), open(main, "wb"))
    pickle.dump(_mixed_items(rng, 120, uids[3:]), open(aux, "wb"))
    return main, aux


def _dataset(tmp_path: Path, *paths: Path, **kw) -> Ego4DPretrainDataset:
    root = tmp_path / "videos"
    root.mkdir(exist_ok=True)
    return Ego4DPretrainDataset(root, paths[0], metadata_aux=list(paths[1:]), num_frames=T, crop_size=S, **kw)


def _assert_same_as_old(ds: Ego4DPretrainDataset, old: OldPath) -> None:
    assert len(ds) == len(old.items)
    for i, item in enumerate(old.items):
        vid, start, end, text = ds.items[i]
        assert (vid, start, end) == (item[0], float(item[1]), float(item[2])), i
        assert text == (item[3] if isinstance(item[3], str) else list(item[3])), i
        # the same choice, and the same generator state afterwards, under the same seed (per-sample seeding)
        torch.manual_seed(1000 + i)
        ours = ds.narration(i), torch.rand(1)
        torch.manual_seed(1000 + i)
        assert (old.narration(i), torch.rand(1)) == ours, i


def test_items_and_narration_choices_equal_the_old_path_with_aux_files(pickles, tmp_path):
    ds = _dataset(tmp_path, *pickles)
    _assert_same_as_old(ds, OldPath(*pickles))
    assert ds.parts[1].narrations(1) == ["", "雨の日 \ud800", "a\x00b"]
    # a second start reads the cache files and gives the same items
    _assert_same_as_old(_dataset(tmp_path, *pickles), OldPath(*pickles))
    with pytest.raises(IndexError):
        ds.items[len(ds)]
    assert ds.items[-1] == ds.items[len(ds) - 1]


def test_getitem_gives_the_old_clips_and_texts_under_per_sample_seeding(tmp_path_factory, tmp_path):
    data = synthetic_root(tmp_path_factory)  # generated once per session, shared with the engine tests
    root, main = data / "ego4d" / "videos", data / "ego4d" / "ego4d_train.pkl"
    items = pickle.load(open(main, "rb"))
    aux = tmp_path / "aux.pkl"
    pickle.dump([(items[0][0], 1.0, 3.0, ["#C C one", "#C C two", "#C C three"]),
                 (items[-1][0], 4.5, 6.0, "#C C plain")], open(aux, "wb"))
    old = OldPath(main, aux)
    reader = ClipDataset(root, num_frames=T, crop_size=S, is_training=True)

    class OldDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(old.items)

        def __getitem__(self, i):
            vid, start, end = old.items[i][:3]
            frames = reader.load_video_clip(vid, float(start), float(end))
            return frames, tokenize(old.narration(i))

    ours = PerSampleSeededDataset(Ego4DPretrainDataset(root, main, metadata_aux=[aux], num_frames=T, crop_size=S),
                                  seed=5)
    theirs = PerSampleSeededDataset(OldDataset(), seed=5)
    picks = [0, 1, len(old.items) - 3, len(old.items) - 2, len(old.items) - 1]
    for i in picks:
        (f1, t1), (f2, t2) = ours[i], theirs[i]
        assert torch.equal(f1, f2) and torch.equal(t1, t2), i


def test_cache_is_used_then_rebuilt_when_the_source_changes(pickles, tmp_path, monkeypatch, caplog):
    main, _ = pickles
    first = load_ego4d_clips(main)
    assert first.cache_path == cache_paths(main)[0] and first.cache_path.parent == main.parent
    assert not first.texts.data.flags.writeable  # a read-only memory map of the file
    copy = pickle.loads(pickle.dumps(first))  # spawned workers get a copy of the columns
    assert copy.video_id(7) == first.video_id(7) and copy.narrations(7) == first.narrations(7)
    import lavila.data.ego4d as ego4d

    real_build = ego4d.build_ego4d_arrays
    monkeypatch.setattr(ego4d, "build_ego4d_arrays", lambda *a: pytest.fail("the cache was not used"))
    assert load_ego4d_clips(main).video_id(5) == first.video_id(5)

    changed = [("new-video", 1.0, 2.0, ["changed"])] * 3
    pickle.dump(changed, open(main, "wb"))
    os.utime(main, ns=(first_ns := os.stat(main).st_mtime_ns, first_ns + 10**9))
    monkeypatch.setattr(ego4d, "build_ego4d_arrays", real_build)
    with caplog.at_level(logging.WARNING, logger="lavila.data.metadata"):
        again = load_ego4d_clips(main)
    assert len(again) == 3 and again.video_id(0) == "new-video" and again.narrations(2) == ["changed"]
    assert "stale" in caplog.text and "rebuilding" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "empty", "bad magic", "bad header"])
def test_truncated_or_corrupt_cache_is_rebuilt(pickles, tmp_path, caplog, damage):
    main, _ = pickles
    cache = load_ego4d_clips(main).cache_path
    blob = cache.read_bytes()
    damaged = {"truncated": blob[: len(blob) - 100], "empty": b"", "bad magic": b"X" + blob[1:],
               "bad header": blob[:20] + b"{not json" + blob[29:]}[damage]
    cache.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="lavila.data.metadata"):
        ds = _dataset(tmp_path, main)
    assert "rebuilding" in caplog.text
    _assert_same_as_old(ds, OldPath(main))
    assert cache.read_bytes() == blob  # rewritten


def test_read_only_folder_puts_the_cache_in_the_cache_folder(pickles, tmp_path, monkeypatch):
    main, _ = pickles
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LAVILA_METADATA_CACHE", raising=False)
    real_save = meta_mod.save_arrays

    def save(path, *args):  # the test runs as root, where a chmod does not stop writes
        if Path(path).parent == main.parent:
            raise PermissionError(13, "Permission denied", str(path))
        return real_save(path, *args)

    monkeypatch.setattr(meta_mod, "save_arrays", save)
    clips = load_ego4d_clips(main)
    assert clips.cache_path.parent == tmp_path / "home" / ".cache" / "lavila" / "metadata"
    assert not cache_paths(main)[0].exists()
    assert load_ego4d_clips(main).cache_path == clips.cache_path  # found there on the next start
    _assert_same_as_old(_dataset(tmp_path, main), OldPath(main))


def test_no_writable_place_keeps_the_arrays_in_memory(pickles, tmp_path, monkeypatch, caplog):
    main, _ = pickles
    monkeypatch.setattr(meta_mod, "save_arrays", lambda path, *a: (_ for _ in ()).throw(OSError(30, "Read-only")))
    with caplog.at_level(logging.WARNING, logger="lavila.data.metadata"):
        clips = load_ego4d_clips(main)
    assert clips.cache_path is None and "keeping it in memory" in caplog.text
    assert clips.video_id(3) == pickle.load(open(main, "rb"))[3][0]


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_malicious_pickle_never_executes_and_leaves_no_cache(tmp_path):
    _Exploit.marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pkl"
    pickle.dump([("vid", 1.0, 2.0, "text"), _Exploit()], open(bad, "wb"))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _dataset(tmp_path, bad)
    assert not _Exploit.marker.exists()
    assert not any(p.exists() for p in cache_paths(bad))


def test_bad_items_are_named_and_bad_times_skipped(tmp_path):
    items = [("vid", 1.0, 2.0, "ok")] * 150 + [("vid", 1.0, 2.0, [])]
    bad = tmp_path / "bad.pkl"
    pickle.dump(items, open(bad, "wb"))
    with pytest.raises(ValueError, match="item 150"):  # the old path only checked the first 100 at start-up
        _dataset(tmp_path, bad)
    pickle.dump([("vid", "x", 2.0, "ok"), ("vid", None, 2.0, ["a"])], open(bad, "wb"))
    ds = _dataset(tmp_path, bad)  # as before: such a clip is skipped (counted) when read
    assert np.isnan(ds.items[0][1]) and ds[0] is None and ds[1] is None
    assert len(ds.skip_tracker.first_paths()) == 2


def test_text_table_round_trip_and_bounds():
    strings = ["", "a", "ü\x00ß", "", "\ud83d", "longer text"]
    table = TextTable.from_strings(strings)
    assert table.tolist() == strings and len(table) == len(strings)
    with pytest.raises(IndexError):
        table[len(strings)]
    assert pickle.loads(pickle.dumps(table)).tolist() == strings  # spawned workers


# ------------------------------------------------------------------------------------------------ EK100, EgoSchema


def _ek100_paths(tmp_path_factory) -> dict[str, Path]:
    data = synthetic_root(tmp_path_factory)
    ann = data / "ek100" / "epic-kitchens-100-annotations"
    return {"root": data / "ek100" / "videos", "mir": ann / "retrieval_annotations" / "EPIC_100_retrieval_train.csv",
            "mir_test": ann / "retrieval_annotations" / "EPIC_100_retrieval_test.csv",
            "train": ann / "EPIC_100_train.csv", "val": ann / "EPIC_100_validation.csv",
            "egoschema": data / "egoschema"}


def test_ek100_items_read_flat_arrays_with_the_old_values(tmp_path_factory):
    import pandas as pd

    from lavila.data.ek100 import ActionVocabulary, EK100CLSDataset, EK100MIRDataset

    p = _ek100_paths(tmp_path_factory)
    for csv, training in ((p["mir"], True), (p["mir_test"], False)):
        ds = EK100MIRDataset(p["root"], csv, is_training=training, num_frames=T, crop_size=S)
        assert ds._clips_df is None and ds._sentences_df is None  # no DataFrame held for the workers
        old = pd.read_csv(csv)
        for row in range(len(old)):  # the old path's expressions: str(video_id), seconds of the timestamps, narration
            h, m, sec = old["start_timestamp"].iat[row].split(":")
            assert ds.flat.video_id(row) == str(old["video_id"].iat[row])
            assert float(ds.flat.start[row]) == int(h) * 3600 + int(m) * 60 + float(sec)
            assert ds.flat.narration(row) == str(old["narration"].iat[row])
        sentences = pd.read_csv(str(csv).replace(".csv", "_sentence.csv"))["narration"].astype(str)
        assert ds.sentence_texts.tolist() == sentences.tolist()
        assert ds.clips["narration"].tolist() == old["narration"].astype(str).tolist()  # re-read on demand
    vocab = ActionVocabulary.from_csvs([p["train"], p["val"]])
    cls = EK100CLSDataset(p["root"], p["val"], vocab, num_frames=T, crop_size=S)
    old = pd.read_csv(p["val"])
    assert [cls.flat.video_id(i) for i in range(len(cls))] == old["video_id"].astype(str).tolist()
    assert cls.flat.stop.tolist() == [cls.clips["stop_sec"].iat[i] for i in range(len(cls))]


def test_ek100_mir_training_items_equal_the_old_dataframe_path(tmp_path_factory):
    from lavila.data.ek100 import EK100MIRDataset

    p = _ek100_paths(tmp_path_factory)
    ds = EK100MIRDataset(p["root"], p["mir"], is_training=True, num_frames=T, crop_size=S)
    clips, sentences = ds.clips, ds.sentences

    class OldMIR(torch.utils.data.Dataset):  # the pre-issue-19 __getitem__: a DataFrame row per item
        def __getitem__(self, index):
            row = int(ds.rows[index])
            clip = clips.iloc[row]
            frames = ds.load_video_clip(str(clip["video_id"]), float(clip["start_sec"]), float(clip["stop_sec"]))
            lo, hi = ds._indptr[row], ds._indptr[row + 1]
            pick = lo + int(torch.randint(hi - lo, (1,)).item())
            caption = sentences["narration"].iat[int(ds._pos_cols[pick])]
            return frames, tokenize(caption), torch.tensor(float(ds._pos_vals[pick]))

    ours, theirs = PerSampleSeededDataset(ds, seed=2), PerSampleSeededDataset(OldMIR(), seed=2)
    for i in (0, len(ds) // 2, len(ds) - 1):
        a, b = ours[i], theirs[i]
        assert all(torch.equal(x, y) for x, y in zip(a, b)), i


def test_egoschema_flat_questions_give_the_old_prompts(tmp_path_factory):
    import json

    from lavila.data.egoschema import EgoSchemaDataset, option_prompts

    p = _ek100_paths(tmp_path_factory)["egoschema"]
    questions = next(p.glob("*question*.json"))
    ds = EgoSchemaDataset(p / "videos", questions, num_frames=T, crop_size=S)
    old = json.loads(questions.read_text())
    old = list(old.values()) if isinstance(old, dict) else old
    assert ds.q_uids == [str(q["q_uid"]) for q in old] and ds.questions == old
    frames, options, index = ds[len(ds) - 1]
    assert index == len(ds) - 1 and torch.equal(options, tokenize(option_prompts(old[-1])))
