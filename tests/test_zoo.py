"""lavila.zoo: registry, resolve (cache hits, offline error), released-format checkpoints -> models.

Only the network is faked: the hub download function / torch hub's URL download are replaced, or the real
huggingface_hub runs in offline mode against a cache laid out on disk.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lavila import zoo
from lavila.models.checkpoint_spec import checkpoint_args, checkpoint_frames

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = dict(embed_dim=32, depth=1, num_heads=2, img_size=32, patch_size=16, project_embed_dim=16,
            text_width=32, text_layers=1, text_heads=2, vocab_size=64, context_length=8)


def _models():
    models = pytest.importorskip("lavila.models")
    if not hasattr(models, "create_model"):
        pytest.skip("lavila.models.create_model not available yet")
    return models


def _hf_cache(root: Path, files: dict[str, bytes]) -> Path:
    """A huggingface_hub cache holding files of the zoo repo at one commit (the layout hf_hub_download uses)."""
    repo = root / ("models--" + zoo.HF_REPO_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def zoo_dir(tmp_path, monkeypatch):
    d = tmp_path / "zoo"
    monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(d))
    return d


def test_registry_has_the_twelve_released_checkpoints():
    names = zoo.list_zoo()
    assert len(names) == 12 and len(set(names)) == 12
    assert sum(zoo.get_entry(n).task == "pretrain" for n in names) == 8
    vivim_s = zoo.get_entry("deit_vivim_small_ego4d4m_bs512_f16")
    assert vivim_s.model == "CLIP_ViViM_small" and vivim_s.filename != zoo.get_entry("deit_vit_small_ego4d4m_bs512_f16")
    assert zoo.get_entry("deit_vivim_small_bs512_f16.pt") is vivim_s  # upstream scripts' local name
    assert zoo.get_entry("clip_timemamba_vanilla_base_ego4d4m_bs512_f4.pt").metrics["egoschema_acc"] == 38.70
    assert zoo.get_entry("nope") is None


def test_registry_matches_checkpoint_key_spec(checkpoint_keys_spec):
    """Every released file named by the key spec is in the zoo with the spec's model name and frame count."""
    for key, spec in checkpoint_keys_spec.items():
        if key.startswith("_"):
            continue
        model = spec["builder"].rsplit(".", 1)[1]
        frames = spec["builder_kwargs"]["num_frames"]
        for fname in spec["released_checkpoints"]:
            if not fname.endswith(".pt"):  # the ViViM-S note about the upstream doc error
                fname = "deit_vivim_small_ego4d4m_bs512_f16.pt"
            entry = zoo.get_entry(fname)
            assert entry is not None, fname
            assert (entry.model, entry.num_frames) == (model, frames), fname
            assert (entry.task == "cls") == key.startswith("VideoClassifier")


def test_path_is_used_as_is_and_sha256_is_checked(tmp_path):
    f = tmp_path / "my.pt"
    f.write_bytes(b"abc")
    assert zoo.resolve(f) == f
    good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert zoo.resolve(str(f), sha256=good) == f
    with pytest.raises(zoo.ZooError, match="checksum mismatch"):
        zoo.resolve(f, sha256="0" * 64)


def test_unknown_name_lists_the_zoo(tmp_path):
    with pytest.raises(zoo.ZooError, match="not an existing file, a zoo name or a URL.*deit_vit_tiny"):
        zoo.resolve("clip_nothing_f4")
    with pytest.raises(zoo.ZooError, match="not an existing file"):  # a missing path is not silently downloaded
        zoo.resolve(str(tmp_path / "deit_vit_tiny_ego4d4m_bs512_f16.pt"))


def test_hub_cache_hit_needs_no_network(tmp_path, offline):
    snap = _hf_cache(tmp_path / "hf", {"deit_vit_tiny_ego4d4m_bs512_f16.pt": b"weights"})
    got = zoo.resolve("deit_vit_tiny_ego4d4m_bs512_f16", cache_dir=tmp_path / "hf")
    assert got == snap / "deit_vit_tiny_ego4d4m_bs512_f16.pt" and got.read_bytes() == b"weights"
    assert zoo.resolve("deit_vit_tiny_bs512_f16.pt", cache_dir=tmp_path / "hf") == got  # upstream local alias


def test_offline_error_prints_url_and_manual_path(tmp_path, offline, zoo_dir):
    with pytest.raises(zoo.ZooError) as err:
        zoo.resolve("clip_timemamba_vanilla_base_ego4d4m_bs512_f4")
    msg = str(err.value)
    assert ("https://huggingface.co/cg1177/video-mamba-suite/resolve/main/"
            "clip_timemamba_vanilla_base_ego4d4m_bs512_f4.pt") in msg
    assert str(zoo_dir / "clip_timemamba_vanilla_base_ego4d4m_bs512_f4.pt") in msg
    # ... and putting the file exactly there makes the same call work, still offline
    zoo_dir.mkdir()
    (zoo_dir / "clip_timemamba_vanilla_base_ego4d4m_bs512_f4.pt").write_bytes(b"x")
    assert zoo.resolve("clip_timemamba_vanilla_base_ego4d4m_bs512_f4") == (
        zoo_dir / "clip_timemamba_vanilla_base_ego4d4m_bs512_f4.pt")


def test_hub_download_then_cache_and_alternate_file_name(tmp_path, monkeypatch, zoo_dir):
    """A fake hub that holds only the scripts' ViViM-S file name: the alternate is tried; the second call hits cache."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    calls = []

    def fake_download(repo_id, filename, cache_dir=None, **kw):
        calls.append(filename)
        snap = Path(cache_dir) / "snap"
        if (snap / filename).is_file():
            return str(snap / filename)
        if filename != "deit_vivim_small_bs512_f16.pt":
            raise RemoteEntryNotFoundError(f"404 {filename}", response=SimpleNamespace(headers={}, request=None))
        snap.mkdir(parents=True, exist_ok=True)
        (snap / filename).write_bytes(b"vivim")
        return str(snap / filename)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    got = zoo.resolve("deit_vivim_small_ego4d4m_bs512_f16", cache_dir=tmp_path / "hf")
    assert got.read_bytes() == b"vivim"
    assert calls == ["deit_vivim_small_ego4d4m_bs512_f16.pt", "deit_vivim_small_bs512_f16.pt"]


def test_url_goes_through_torch_hub_cache(tmp_path, monkeypatch):
    import torch.hub

    calls = []

    def fake_fetch(url, dst, progress=True, **kw):
        calls.append(url)
        Path(dst).write_bytes(b"from-url")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(zoo.ZOO_DIR_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_fetch)
    url = "https://example.org/models/my_ckpt.pt"
    first = zoo.resolve(url)
    assert first == tmp_path / "hub" / "checkpoints" / "my_ckpt.pt" and first.read_bytes() == b"from-url"
    assert zoo.resolve(url) == first and calls == [url]  # second call: cache hit, no download

    def no_network(url, dst, progress=True, **kw):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(zoo.ZooError, match=r"(?s)Network is unreachable.*https://example.org/models/other.pt.*"
                                           + re.escape(str(tmp_path / "hub" / "checkpoints" / "other.pt"))):
        zoo.resolve("https://example.org/models/other.pt")


def test_frames_and_model_from_args_or_keys():
    ns = argparse.Namespace(model="CLIP_TimeSformerB16", clip_length=4)
    assert zoo.infer_model_spec({"args": ns, "state_dict": {}}) == {
        "model": "CLIP_TimeSformerB16", "num_frames": 4, "num_classes": None}
    sd = {"module.visual.temporal_embedding": torch.zeros(16, 1, 8), "module.fc_cls.weight": torch.zeros(7, 8)}
    spec = zoo.infer_model_spec({"args": {"model": "CLIP_ViViM_tiny"}, "state_dict": sd})
    assert spec == {"model": "CLIP_ViViM_tiny", "num_frames": 16, "num_classes": 7}
    assert checkpoint_frames({"visual.temporal_embed": torch.zeros(1, 8, 4)}) == 8
    cls = zoo.get_entry("clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_cls_f16")
    assert zoo.infer_model_spec({"args": argparse.Namespace(pretrain_model="x.pt"), "state_dict": {}}, cls)["model"] \
        == "CLIP_TimeMamba_like_timesformer"
    with pytest.raises(zoo.ZooError, match="pass model="):
        zoo.infer_model_spec({"args": argparse.Namespace(clip_length=16), "state_dict": {}})


def _released_file(tmp_path: Path, model_name: str, frames: int, num_classes: int | None = None) -> tuple[Path, dict]:
    """A checkpoint in the released format: DDP 'module.' keys, pickled argparse.Namespace args."""
    models = _models()
    torch.manual_seed(0)
    net = models.create_model(model_name, num_classes=num_classes, num_frames=frames, **TINY)
    sd = {"module." + k: v.clone() for k, v in net.state_dict().items()}
    args = argparse.Namespace(model=model_name, clip_length=frames, project_embed_dim=16, context_length=8)
    path = tmp_path / f"{model_name}_f{frames}.pt"
    torch.save({"epoch": 5, "state_dict": sd, "optimizer": {}, "scaler": {}, "best_acc1": 0.1, "args": args}, path)
    return path, net.state_dict()


@pytest.mark.parametrize("model_name,frames", [("CLIP_TimeSformerB16", 4), ("CLIP_VITT16", 3)])
def test_released_format_checkpoint_loads_into_right_model(tmp_path, model_name, frames):
    path, ref = _released_file(tmp_path, model_name, frames)
    ckpt = zoo.load(path)
    assert isinstance(ckpt["args"], argparse.Namespace) and ckpt["args"].clip_length == frames
    net = zoo.build_model_from_checkpoint(path, **TINY)
    assert net.num_frames == frames and net.config.get("num_frames", frames) == frames
    got = net.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_released_classifier_checkpoint_builds_classifier(tmp_path):
    path, ref = _released_file(tmp_path, "CLIP_TimeSformerB16", 2, num_classes=5)
    net = zoo.build_model_from_checkpoint(path, **TINY)
    got = net.state_dict()
    assert got["visual.temporal_embed"].shape[1] == 2
    assert got["fc_cls.weight"].shape == (5, 32) and torch.equal(got["fc_cls.weight"], ref["fc_cls.weight"])


def _model_zoo_rows(repo_root: Path) -> list[str]:
    text = (repo_root / "docs" / "MODEL_ZOO.md").read_text()
    return re.findall(r"\[([a-z0-9_]+\.pt)\]\(" + re.escape(zoo.HF_WEB_PREFIX), text)


def test_every_model_zoo_row_resolves_and_builds(repo_root):
    rows = _model_zoo_rows(repo_root)
    assert sorted(rows) == sorted(e.filename for e in zoo.ZOO)
    models = _models()
    known = set(models.list_models())
    for fname in rows:
        entry = zoo.get_entry(fname)
        assert entry.model in known, entry.model
        with torch.device("meta"):  # full size, no memory
            net = models.create_model(entry.model, num_classes=entry.num_classes, num_frames=entry.num_frames)
        assert getattr(net, "num_frames", entry.num_frames) == entry.num_frames


def test_model_zoo_doc_does_not_repeat_the_vivim_s_link_error(repo_root):
    text = (repo_root / "docs" / "MODEL_ZOO.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| ViViM-S"))
    assert "deit_vivim_small" in row and "deit_vit_small" not in row


def test_released_args_namespace_is_copied_not_shared():
    ns = argparse.Namespace(model="m", clip_length=4)
    d = checkpoint_args({"args": ns})
    d["model"] = "x"
    assert ns.model == "m"


def test_unreachable_hub_is_probed_once_and_only_the_cache_is_read(tmp_path, monkeypatch, zoo_dir):
    import socket

    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in zoo._PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    probes, downloads = [], []

    def no_network(address, timeout=None):
        probes.append(address)
        raise OSError("network unreachable")

    def cache_only(repo_id, filename, cache_dir=None, local_files_only=False, **kw):
        downloads.append(local_files_only)
        from huggingface_hub.errors import LocalEntryNotFoundError

        raise LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cache_only)
    zoo._probe_hub.cache_clear()
    try:
        for _ in range(2):
            with pytest.raises(zoo.ZooError, match="HF_HUB_OFFLINE=1"):
                zoo.resolve("clip_timemamba_vanilla_base_ego4d4m_bs512_f4")
    finally:
        zoo._probe_hub.cache_clear()
    assert len(probes) == 1 and downloads == [True, True]


def test_hf_hub_offline_skips_the_probe(monkeypatch):
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed with HF_HUB_OFFLINE=1"))
    assert zoo.hub_reachable() is False
