"""--pretrain-zoo downloads as the reference builders: DeiT-T/S/B from dl.fbaipublicfiles.com through torch.hub's
cache (sha256 prefix checked), Vim-T/S from the Vim authors' Hugging Face repos through huggingface_hub, CLIP ViT-B/16
through open_clip. Only the outermost download call is faked (it serves a locally generated random state dict with
the real key names); each test checks which keys were loaded into which tower, and that the load report is logged.
Offline, each error names the URL, the path to put the file at and the flag that takes a local file."""
from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pytest
import torch
from engine_helpers import tiny_open_clip

from lavila import zoo
from lavila.models import create_model
from lavila.train.engine_utils import init_pretrained
from lavila.train.loop import TrainingError

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

TEXT = dict(text_width=32, text_layers=1, text_heads=2, vocab_size=100, context_length=16, project_embed_dim=16)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> tuple[Path, dict]:
    clip = tiny_open_clip(seed=0, vision_width=64, context_length=16, vocab_size=100)
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    torch.save(clip.state_dict(), path)
    return path, clip.state_dict()


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """torch.hub's cache dir in tmp (the zoo dir defaults to <hub>/checkpoints)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(zoo.ZOO_DIR_ENV, raising=False)
    return tmp_path / "hub" / "checkpoints"


def _args(**kw) -> argparse.Namespace:
    base = {"pretrain_zoo": "deit", "pretrain_path": None, "pretrain_clip_path": None, "pretrain_vim_path": None,
            "trust_checkpoint": False, "deit_patch_bias": "fold"}
    return argparse.Namespace(**{**base, **kw})


def _towers(keys: list[str]) -> dict[str, set[str]]:
    return {t: {k for k in keys if k.startswith(t + ".")} for t in ("visual", "textual")}


def _all_keys(model: torch.nn.Module, tower: str) -> set[str]:
    return {k for k in model.state_dict() if k.startswith(tower + ".")}


def test_deit_tiny_download_through_torch_hub_cache(tmp_path, hub, clip_file, monkeypatch, capsys):
    torch.manual_seed(1)
    deit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=16, embed_dim=192, depth=1,
                                                            num_heads=3, num_classes=10)
    served = tmp_path / "served.pth"
    torch.save({"model": deit.state_dict()}, served)  # the DeiT release layout
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        shutil.copy(served, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    clip_path, clip_sd = clip_file
    dest = hub / "deit_tiny_patch16_224-a1311bcf.pth"
    for bias in ("drop", "fold"):
        model = create_model("CLIP_VITT16", depth=1, num_frames=2, img_size=32, **TEXT)
        report = init_pretrained(model, _args(pretrain_clip_path=str(clip_path), deit_patch_bias=bias))
        loaded = _towers(report.loaded)
        assert loaded["visual"] == _all_keys(model, "visual") - {
            "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.temporal_embedding", "visual.image_projection"}
        assert loaded["textual"] == _all_keys(model, "textual") - {"textual.text_projection"}
        assert torch.equal(model.visual.ln_post.weight, deit.norm.weight)
        assert torch.equal(model.textual.ln_final.weight, clip_sd["ln_final.weight"])
        pos, deit_pos, patch_bias = model.visual.positional_embedding, deit.pos_embed[0], deit.patch_embed.proj.bias
        if bias == "drop":  # the reference: the patch-embed bias is discarded
            assert torch.equal(pos, deit_pos) and "patch_embed.proj.bias" in report.ignored_source_keys
        else:
            assert torch.allclose(pos[1:], deit_pos[1:] + patch_bias) and torch.equal(pos[0], deit_pos[0])
        assert "pretrained initialisation: loaded" in capsys.readouterr().out
    # one download (the second model is a cache hit), from the reference's URL, with its sha256 prefix checked
    assert calls == [("https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth", str(dest), "a1311bcf")]


@pytest.mark.parametrize("model_name, width, name", [("CLIP_VITT16", 192, "deit_tiny_patch16_224-a1311bcf.pth"),
                                                     ("CLIP_VITS16", 384, "deit_small_patch16_224-cd65a155.pth"),
                                                     ("CLIP_VITB16", 768, "deit_base_patch16_224-b5f2ef4d.pth")])
def test_deit_offline_error_names_url_cache_path_and_flag(model_name, width, name, hub, clip_file, monkeypatch):
    def no_network(url, dst, hash_prefix=None, progress=True):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model = create_model(model_name, depth=1, num_frames=2, img_size=32, **TEXT)
    assert model.config["embed_dim"] == width
    with pytest.raises(TrainingError) as err:
        init_pretrained(model, _args(pretrain_clip_path=str(clip_file[0])))
    msg = str(err.value)
    assert f"https://dl.fbaipublicfiles.com/deit/{name}" in msg and str(hub / name) in msg
    assert "--pretrain-path FILE" in msg and "Network is unreachable" in msg


def _vim_state_dict(model_name: str, depth: int) -> dict[str, torch.Tensor]:
    """A Vim 'midclstok' ImageNet state dict: ViViM's visual keys minus the video parts, plus the classifier head."""
    src = create_model(model_name, num_classes=1, depth=depth, img_size=32, num_frames=1)
    sd = {k[len("visual."):]: torch.randn_like(v) for k, v in src.state_dict().items() if k.startswith("visual.")}
    del sd["temporal_embedding"]
    width = src.config["embed_dim"]
    return {**sd, "head.weight": torch.randn(10, width), "head.bias": torch.randn(10)}


@pytest.mark.parametrize("model_name, repo, filename", [
    ("CLIP_ViViM_tiny", "hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"),
    ("CLIP_ViViM_small", "hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth")])
def test_vivim_under_openai_loads_vim_from_hugging_face_and_clip_text(model_name, repo, filename, tmp_path, hub,
                                                                      clip_file, monkeypatch, capsys):
    import huggingface_hub

    torch.manual_seed(2)
    vim = _vim_state_dict(model_name, depth=1)
    calls = []

    def fake_hf_download(repo_id, filename, cache_dir=None, **kw):
        calls.append((repo_id, filename))
        path = tmp_path / "hf" / filename
        path.parent.mkdir(exist_ok=True)
        torch.save({"model": vim}, path)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_download)
    clip_path, clip_sd = clip_file
    model = create_model(model_name, depth=1, num_frames=2, img_size=32, **TEXT)
    report = init_pretrained(model, _args(pretrain_zoo="openai", pretrain_path=str(clip_path)))
    assert calls == [(repo, filename)]
    loaded = _towers(report.loaded)
    assert loaded["visual"] == _all_keys(model, "visual") - {"visual.temporal_embedding", "visual.image_projection"}
    assert loaded["textual"] == _all_keys(model, "textual") - {"textual.text_projection"}
    assert report.ignored_source_keys == ["head.weight", "head.bias"]
    assert torch.equal(model.visual.layers[0].mixer.A_b_log, vim["layers.0.mixer.A_b_log"])
    assert torch.equal(model.textual.token_embedding.weight, clip_sd["token_embedding.weight"])
    assert "pretrained initialisation: loaded" in capsys.readouterr().out


def test_vim_offline_error_and_local_file_flag(tmp_path, hub, clip_file, monkeypatch):
    import huggingface_hub

    def offline(repo_id, filename, cache_dir=None, **kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline and not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    model = create_model("CLIP_ViViM_tiny", depth=1, num_frames=2, img_size=32, **TEXT)
    args = _args(pretrain_zoo="openai", pretrain_path=str(clip_file[0]))
    with pytest.raises(TrainingError) as err:
        init_pretrained(model, args)
    msg = str(err.value)
    assert "https://huggingface.co/hustvl/Vim-tiny-midclstok/resolve/main/vim_t_midclstok_76p1acc.pth" in msg
    assert str(hub / "vim_t_midclstok_76p1acc.pth") in msg and "--pretrain-vim-path FILE" in msg
    vim = tmp_path / "vim_t.pth"
    torch.save({"model": _vim_state_dict("CLIP_ViViM_tiny", depth=1)}, vim)
    report = init_pretrained(model, _args(pretrain_zoo="openai", pretrain_path=str(clip_file[0]),
                                          pretrain_vim_path=str(vim)))  # the flag: no download
    assert "visual.layers.0.mixer.A_log" in report.loaded


@pytest.mark.parametrize("zoo_name, flag", [("openai", "--pretrain-path"), ("deit", "--pretrain-clip-path")])
def test_clip_offline_error_names_url_cache_path_and_flag(zoo_name, flag, tmp_path, hub, clip_file, monkeypatch):
    def offline(*a, **kw):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(open_clip, "create_model", offline)  # open_clip's download of the OpenAI weights
    deit = tmp_path / "deit.pth"
    torch.save({"model": timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=16, embed_dim=192, depth=1, num_heads=3).state_dict()}, deit)
    # under openai a ViViM takes only the text tower from CLIP (the tiny CLIP file has no 192-wide visual)
    model = create_model("CLIP_VITT16" if zoo_name == "deit" else "CLIP_ViViM_tiny", depth=1, num_frames=2,
                         img_size=32, **TEXT)
    args = _args(pretrain_zoo=zoo_name, pretrain_path=str(deit) if zoo_name == "deit" else None)
    with pytest.raises(TrainingError) as err:
        init_pretrained(model, args)
    msg = str(err.value)
    assert zoo.CLIP_VITB16_URL in msg and str(hub / "ViT-B-16.pt") in msg and f"{flag} FILE" in msg
    # a file put at that path is used without any download
    hub.mkdir(parents=True, exist_ok=True)
    shutil.copy(clip_file[0], hub / "ViT-B-16.pt")
    if zoo_name == "openai":
        args.pretrain_vim_path = str(tmp_path / "vim.pth")
        torch.save({"model": _vim_state_dict("CLIP_ViViM_tiny", depth=1)}, args.pretrain_vim_path)
    report = init_pretrained(model, args)
    assert "textual.ln_final.weight" in report.loaded


def test_width_without_a_release_is_a_clear_error(clip_file):
    model = create_model("CLIP_VITT16", embed_dim=64, num_heads=2, depth=1, num_frames=2, img_size=32, **TEXT)
    with pytest.raises(TrainingError, match=re.escape("no released DeiT ImageNet weights for a 64-wide")):
        init_pretrained(model, _args(pretrain_clip_path=str(clip_file[0])))


@pytest.mark.slow  # ~15 s: one epoch of the ViViM-T zoo recipe on generated data
def test_vivim_zoo_recipe_trains_from_the_downloaded_initialisation(tmp_path_factory, tmp_path, hub, monkeypatch):
    """configs/zoo/deit_vivim_tiny_ego4d4m_bs512_f16/train.yaml as is (only data, size and device flags added): the
    Vim-T weights come from the (faked) Hugging Face download, the CLIP text tower from ViT-B-16.pt in the zoo dir."""
    import huggingface_hub
    import yaml
    from engine_helpers import paths, synthetic_root

    from lavila.train.loop import run
    from lavila.train.pretrain import PretrainEngine

    vim = _vim_state_dict("CLIP_ViViM_tiny", depth=1)
    calls = []

    def fake_hf_download(repo_id, filename, cache_dir=None, **kw):
        calls.append(repo_id)
        torch.save({"model": vim}, tmp_path / filename)
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_download)
    hub.mkdir(parents=True)
    clip = tiny_open_clip(seed=0, vision_width=64, context_length=16)  # the real vocabulary: ids reach 49407
    torch.save(clip.state_dict(), hub / "ViT-B-16.pt")
    p = paths(synthetic_root(tmp_path_factory))
    repo = Path(__file__).resolve().parents[1]
    argv = ["--config", str(repo / "configs/zoo/deit_vivim_tiny_ego4d4m_bs512_f16/train.yaml"),
            "--root", p["ego4d_root"], "--train-metadata", p["ego4d_meta"], "--output-dir", str(tmp_path / "out"),
            "--model-overrides", "depth=1", *[f"{k}={v}" for k, v in TEXT.items() if k != "vocab_size"],
            "--context-length", "16", "--project-embed-dim", "16", "--input-size", "32", "--clip-length", "2",
            "--batch-size", "4", "--epochs", "1", "--workers", "0", "--device", "cpu"]
    summary = run(PretrainEngine(), argv)
    assert summary["status"] == "finished" and calls == ["hustvl/Vim-tiny-midclstok"]
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert (config["pretrain_zoo"], config["wd_rule"], config["epoch_shuffle"]) == ("openai", "reference", "reference")
