"""The released video-mamba-suite egocentric model zoo: names -> files, download/cache, load.

``resolve(x)`` turns a zoo name, a URL or a local path into a local file; ``load(x)`` returns the raw checkpoint dict
(loaded safely through :func:`lavila.utils.checkpoint.load_checkpoint`); ``build_model_from_checkpoint`` builds the
matching model with the right frame count and loads the weights.

Zoo names are the released file names without ``.pt`` (``clip_timesformer_vanilla_base_ego4d4m_bs512_f4``). The
upstream scripts' local file names (the same names without ``_ego4d4m``) are accepted as aliases.

Fixed reference error: upstream ``docs/MODEL_ZOO.md`` links the ViViM-S row to ``deit_vit_small_ego4d4m_bs512_f16.pt``
(the ViT-S file). Here ViViM-S is ``deit_vivim_small_ego4d4m_bs512_f16.pt``, the released naming pattern of the
ViViM-T row applied to the file name the upstream infer script uses (``deit_vivim_small_bs512_f16.pt``), which is
tried second when the first name is not on the hub.
"""
from __future__ import annotations

import functools
import hashlib
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

HF_REPO_ID = "cg1177/video-mamba-suite"
HF_WEB_PREFIX = f"https://huggingface.co/{HF_REPO_ID}/blob/main/"
HF_DOWNLOAD_PREFIX = f"https://huggingface.co/{HF_REPO_ID}/resolve/main/"
ZOO_DIR_ENV = "LAVILA_ZOO_DIR"


class ZooError(FileNotFoundError):
    """A checkpoint that cannot be found, downloaded, verified or matched to a model.

    A FileNotFoundError so that the engines' "checkpoint not available" handling reports it as one clear line.
    """


@dataclass(frozen=True)
class ZooEntry:
    name: str                      # released file name without ".pt"
    model: str                     # upstream --model name (lavila.models registry)
    num_frames: int
    task: str                      # "pretrain" (zero-shot), "mir" (fine-tuned MIR) or "cls" (fine-tuned CLS)
    arch: str                      # short label used in docs/MODEL_ZOO.md
    pretrain_image: str            # "Pretrain-I" column
    pretrain_video: str = "Ego4D-4M"
    finetuned: str = "-"
    num_classes: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    alternates: tuple[str, ...] = ()  # further file names tried on the hub, in order
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.name + ".pt"

    @property
    def url(self) -> str:
        return HF_DOWNLOAD_PREFIX + self.filename

    @property
    def local_alias(self) -> str:
        """The file name the upstream Slurm scripts use for this checkpoint (no ``_ego4d4m``)."""
        return self.name.replace("_ego4d4m", "")


def _zs(mAP: float, ndcg: float, **extra: float) -> dict[str, float]:
    return {"zs_mir_map": mAP, "zs_mir_ndcg": ndcg, **extra}


_CLIP = "CLIP ViT-B/16"
ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("clip_timesformer_vanilla_base_ego4d4m_bs512_f4", "CLIP_TimeSformerB16", 4, "pretrain",
             "TimeSformer-B", _CLIP, metrics=_zs(25.5, 28.6, egoschema_acc=38.52)),
    ZooEntry("clip_timesformer_frozen_base_ego4d4m_bs512_f4", "CLIP_FrozenInTime_TimeSformerB16", 4, "pretrain",
             "TimeSformer-B (Frozen-in-Time)", _CLIP, metrics=_zs(26.0, 29.0)),
    ZooEntry("clip_timemamba_vanilla_base_ego4d4m_bs512_f4", "CLIP_TimeMamba_like_timesformer", 4, "pretrain",
             "TimeMamba-B", _CLIP, metrics=_zs(26.2, 29.2, egoschema_acc=38.70)),
    ZooEntry("clip_timemamba_frozen_base_ego4d4m_bs512_f4", "CLIP_TimeMamba_like_frozen", 4, "pretrain",
             "TimeMamba-B (Frozen-in-Time)", _CLIP, metrics=_zs(26.8, 29.5)),
    ZooEntry("clip_timesformer_vanilla_base_ego4d4m_bs512_f4_ft_ek100_cls_f16", "CLIP_TimeSformerB16", 16, "cls",
             "TimeSformer-B", _CLIP, finetuned="EK100 CLS", num_classes=3806,
             metrics={"verb_top1": 65.2, "noun_top1": 55.0, "action_top1": 44.5, "action_top5": 62.4}),
    ZooEntry("clip_timesformer_vanilla_base_ego4d4m_bs512_f4_ft_ek100_mir_f16", "CLIP_TimeSformerB16", 16, "mir",
             "TimeSformer-B", _CLIP, finetuned="EK100 MIR", metrics={"ft_mir_map": 48.2, "ft_mir_ndcg": 62.7}),
    ZooEntry("clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_cls_f16", "CLIP_TimeMamba_like_timesformer", 16,
             "cls", "TimeMamba-B", _CLIP, finetuned="EK100 CLS", num_classes=3806,
             metrics={"verb_top1": 68.5, "noun_top1": 55.8, "action_top1": 46.1, "action_top5": 63.8}),
    ZooEntry("clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_mir_f16", "CLIP_TimeMamba_like_timesformer", 16,
             "mir", "TimeMamba-B", _CLIP, finetuned="EK100 MIR", metrics={"ft_mir_map": 48.9, "ft_mir_ndcg": 64.6}),
    ZooEntry("deit_vit_tiny_ego4d4m_bs512_f16", "CLIP_VITT16", 16, "pretrain", "ViT-T", "DeiT-T",
             metrics=_zs(17.88, 24.31)),
    ZooEntry("deit_vit_small_ego4d4m_bs512_f16", "CLIP_VITS16", 16, "pretrain", "ViT-S", "DeiT-S",
             metrics=_zs(20.70, 25.90)),
    ZooEntry("deit_vivim_tiny_ego4d4m_bs512_f16", "CLIP_ViViM_tiny", 16, "pretrain", "ViViM-T", "Vim-T",
             metrics=_zs(20.26, 25.80)),
    ZooEntry("deit_vivim_small_ego4d4m_bs512_f16", "CLIP_ViViM_small", 16, "pretrain", "ViViM-S", "Vim-S",
             metrics=_zs(22.80, 26.70), alternates=("deit_vivim_small_bs512_f16.pt",)),
)
_BY_NAME: dict[str, ZooEntry] = {}
for _e in ZOO:
    _BY_NAME[_e.name] = _e
    _BY_NAME[_e.local_alias] = _e


def list_zoo() -> list[str]:
    """The zoo names, in docs/MODEL_ZOO.md order."""
    return [e.name for e in ZOO]


def get_entry(name: str) -> ZooEntry | None:
    """The zoo entry for a name, a released file name or an upstream local file name (with or without ``.pt``)."""
    stem = os.path.basename(str(name))
    if stem.endswith(".pt"):
        stem = stem[:-3]
    return _BY_NAME.get(stem)


def default_zoo_dir() -> Path:
    """Where files put there by hand are found: ``$LAVILA_ZOO_DIR`` or ``<torch hub dir>/checkpoints``."""
    if os.environ.get(ZOO_DIR_ENV):
        return Path(os.environ[ZOO_DIR_ENV]).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in ("http", "https", "ftp", "file")


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, sha256: str | None) -> Path:
    if sha256:
        got = sha256_of(path)
        if got.lower() != sha256.lower():
            raise ZooError(f"checksum mismatch for {path}: sha256 {got}, expected {sha256}. The file is corrupt or "
                           "not the expected checkpoint; delete it and download it again.")
    return path


PROBE_TIMEOUT_S = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@functools.lru_cache(maxsize=1)
def _probe_hub(endpoint: str) -> bool:
    """One TCP connection to the hub's host (at most PROBE_TIMEOUT_S), once per process."""
    import socket

    parsed = urllib.parse.urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "huggingface.co", port), timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """False with ``HF_HUB_OFFLINE=1``; else whether the hub's host answers (checked once per process; assumed
    reachable behind a proxy). Unreachable: only the local cache is read, so an offline machine does not spend
    huggingface_hub's retries (about 25 s) on every attempt."""
    import huggingface_hub.constants as hf

    if hf.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    return _probe_hub(hf.ENDPOINT)


def _hf_download(filename: str, cache_dir: str | os.PathLike | None, local_only: bool = False,
                 repo_id: str = HF_REPO_ID) -> Path:
    """One download attempt through huggingface_hub (its own cache makes a second call a cache hit); with
    ``local_only`` the cache alone."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename,
                                cache_dir=None if cache_dir is None else str(cache_dir), local_files_only=local_only))


def _url_download(url: str, dest: Path, hash_prefix: str | None = None) -> Path:
    import torch.hub

    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), hash_prefix=hash_prefix, progress=True)
    return dest


def _offline_error(what: str, urls: list[str], manual: Path, exc: BaseException, flag: str | None = None
                   ) -> ZooError:
    links = "\n".join(f"  {u}" for u in urls)
    local = f"or pass the file with {flag} FILE" if flag else "or pass the file's path instead of the name"
    return ZooError(
        f"could not download {what} ({type(exc).__name__}: {exc}).\n"
        f"Download it by hand from\n{links}\nand put it at\n  {manual}\n"
        f"(or set {ZOO_DIR_ENV} to the folder holding it, {local}).\n"
        "On a machine without internet, set HF_HUB_OFFLINE=1: the hub is then not tried at all.")


def _resolve_entry(entry: ZooEntry, cache_dir: str | os.PathLike | None) -> Path:
    manual_dir = Path(cache_dir) if cache_dir is not None else default_zoo_dir()
    names = [entry.filename, *entry.alternates]
    for fname in names:  # files placed by hand win over the hub
        if (manual_dir / fname).is_file():
            return manual_dir / fname
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    last: BaseException | None = None
    local_only = not hub_reachable()
    for fname in names:
        try:
            return _hf_download(fname, cache_dir, local_only)
        except LocalEntryNotFoundError as exc:  # offline and not cached (a subclass of EntryNotFoundError)
            raise _offline_error(f"zoo checkpoint '{entry.name}'", [HF_DOWNLOAD_PREFIX + f for f in names],
                                 manual_dir / entry.filename, exc) from exc
        except EntryNotFoundError as exc:  # the hub answered "no such file": try the next file name
            last = exc
        except Exception as exc:  # offline, DNS, proxy, HTTP 5xx ...
            raise _offline_error(f"zoo checkpoint '{entry.name}'", [HF_DOWNLOAD_PREFIX + f for f in names],
                                 manual_dir / entry.filename, exc) from exc
    raise ZooError(f"zoo checkpoint '{entry.name}': none of {names} exists on the hub repo {HF_REPO_ID} "
                   f"({last}). Download it by hand and pass its path.")


def resolve(name_or_path_or_url: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
            sha256: str | None = None) -> Path:
    """A local file for a path (used as is), a zoo name (hub download, cached) or a URL (torch hub cache)."""
    text = os.fspath(name_or_path_or_url)
    path = Path(text).expanduser()
    if path.is_file():
        return _verify(path, sha256)
    entry = get_entry(text) if not _is_url(text) else None
    if entry is not None and (os.sep not in text or text == entry.filename):
        return _verify(_resolve_entry(entry, cache_dir), sha256 or entry.sha256)
    if _is_url(text):
        if text.startswith("file://"):
            local = Path(urllib.parse.urlparse(text).path)
            if not local.is_file():
                raise ZooError(f"checkpoint not found: {local} (from {text})")
            return _verify(local, sha256)
        return _verify(_resolve_url(text, cache_dir), sha256)
    raise ZooError(f"checkpoint not found: '{text}' is not an existing file, a zoo name or a URL. "
                   f"Zoo names: {', '.join(list_zoo())} (see docs/MODEL_ZOO.md).")


def _resolve_url(url: str, cache_dir: str | os.PathLike | None, what: str | None = None, flag: str | None = None,
                 hash_prefix: str | None = None) -> Path:
    """``url`` through torch's hub cache (``<cache_dir or zoo dir>/<file name>``; a file already there is used)."""
    dest = (Path(cache_dir) if cache_dir is not None else default_zoo_dir()) / os.path.basename(
        urllib.parse.urlparse(url).path)
    if dest.is_file():
        return dest
    try:
        return _url_download(url, dest, hash_prefix)
    except Exception as exc:
        raise _offline_error(what or f"checkpoint {url}", [url], dest, exc, flag) from exc


# ---- ImageNet weights of the visual towers (--pretrain-zoo), from where the reference builders take them ----------

@dataclass(frozen=True)
class ImageWeights:
    """One pretrained image-model file: DeiT from its release URL (torch.hub's cache, sha256 prefix checked as the
    reference's ``check_hash=True``), Vim from its authors' Hugging Face repo (huggingface_hub)."""
    label: str
    filename: str
    hf_repo: str | None = None
    url_prefix: str = "https://dl.fbaipublicfiles.com/deit/"
    hash_prefix: str | None = None

    @property
    def url(self) -> str:
        if self.hf_repo:
            return f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.filename}"
        return self.url_prefix + self.filename


# keyed by tower width (embed_dim)
DEIT_WEIGHTS: dict[int, ImageWeights] = {
    192: ImageWeights("DeiT-T", "deit_tiny_patch16_224-a1311bcf.pth", hash_prefix="a1311bcf"),
    384: ImageWeights("DeiT-S", "deit_small_patch16_224-cd65a155.pth", hash_prefix="cd65a155"),
    768: ImageWeights("DeiT-B", "deit_base_patch16_224-b5f2ef4d.pth", hash_prefix="b5f2ef4d"),
}
VIM_WEIGHTS: dict[int, ImageWeights] = {
    192: ImageWeights("Vim-T (Vim-tiny-midclstok)", "vim_t_midclstok_76p1acc.pth", hf_repo="hustvl/Vim-tiny-midclstok"),
    384: ImageWeights("Vim-S (Vim-small-midclstok)", "vim_s_midclstok_80p5acc.pth",
                      hf_repo="hustvl/Vim-small-midclstok"),
}
CLIP_VITB16_URL = ("https://openaipublic.azureedge.net/clip/models/"
                   "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt")
CLIP_VITB16_FILE = "ViT-B-16.pt"  # OpenAI's TorchScript file; one put in the zoo dir is used without a download


def resolve_image_weights(weights: ImageWeights, flag: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local file for ``weights``: one put by hand in the zoo dir, else a download (torch.hub's cache for URLs,
    huggingface_hub for Hugging Face repos). Failures name the URL, the path to put the file at and ``flag``."""
    what = f"the {weights.label} ImageNet weights"
    if not weights.hf_repo:
        return _resolve_url(weights.url, cache_dir, what, flag, weights.hash_prefix)
    manual = (Path(cache_dir) if cache_dir is not None else default_zoo_dir()) / weights.filename
    if manual.is_file():
        return manual
    try:
        return _hf_download(weights.filename, cache_dir, not hub_reachable(), repo_id=weights.hf_repo)
    except Exception as exc:  # offline, not cached, DNS, proxy, HTTP errors ...
        raise _offline_error(what, [weights.url], manual, exc, flag) from exc


def load(name_or_path_or_url: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
         sha256: str | None = None) -> dict:
    """The raw checkpoint dict (``state_dict``, ``args`` ...) of a zoo name, URL or path, loaded safely."""
    from lavila.utils.checkpoint import load_checkpoint

    return load_checkpoint(resolve(name_or_path_or_url, cache_dir=cache_dir, sha256=sha256))


# ---- building a model from a checkpoint ---------------------------------------------------------------------------

def infer_model_spec(ckpt: Mapping[str, Any], entry: ZooEntry | None = None) -> dict[str, Any]:
    """``{"model", "num_frames", "num_classes"}`` for a checkpoint: what it describes
    (:func:`lavila.models.checkpoint_spec.checkpoint_model_spec`, ``fc_cls`` rows), else the zoo entry's."""
    from lavila.models.checkpoint_spec import checkpoint_model_spec
    from lavila.utils.checkpoint import classifier_classes

    name, spec = checkpoint_model_spec(ckpt)
    model = name or (entry.model if entry else None)
    frames = spec.get("num_frames") or (entry.num_frames if entry else None)
    num_classes = classifier_classes(ckpt)
    if num_classes is None and entry is not None:
        num_classes = entry.num_classes
    if not model:
        raise ZooError("the checkpoint's args name no model (CLS checkpoints only keep the pretrain checkpoint's "
                       "path); pass model=<name>, e.g. CLIP_TimeSformerB16")
    return {"model": str(model), "num_frames": int(frames) if frames else None, "num_classes": num_classes}


def build_model_from_checkpoint(name_or_path_or_url: str | os.PathLike | Mapping[str, Any], model: str | None = None,
                                num_frames: int | None = None, cache_dir: str | os.PathLike | None = None,
                                **overrides: Any):
    """Build the checkpoint's model (CLIP or VideoClassifier) with its frame count and load its weights strictly.

    The model name comes from ``model``, else the checkpoint's ``model_name`` / ``args.model``, else the zoo entry
    (released CLS files keep no model name). ``num_frames`` different from the checkpoint's resizes the temporal
    embedding.
    """
    from lavila.models.released import build_from_released_checkpoint

    if isinstance(name_or_path_or_url, Mapping):
        ckpt, entry = name_or_path_or_url, None
    else:
        ckpt, entry = load(name_or_path_or_url, cache_dir=cache_dir), get_entry(os.fspath(name_or_path_or_url))
    name = model or infer_model_spec(ckpt, entry)["model"]
    return build_from_released_checkpoint(ckpt, num_frames=num_frames, model_name=name, **overrides)
