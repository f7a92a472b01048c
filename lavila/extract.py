"""Dense sliding-window features of your own videos (``extract_features.py``; layout of the outputs in
``lavila.evaluation.feature_store``, windowing in ``lavila.evaluation.features``).

    python extract_features.py --model clip_timemamba_... --input videos/ --output-dir feats/
    torchrun --nproc_per_node 8 extract_features.py --model checkpoint.pt --input list.txt --output-dir feats/

Model: a zoo name, a checkpoint file (or URL), or a registry name (random weights, ``--seed``; ``--model-overrides``
for tiny sizes). ``--clip-length`` different from the checkpoint's frame count resizes the temporal embedding as
fine-tuning does (``lavila.models.released.load_released_state_dict``).

Input: a folder (searched recursively: video files, and folders of chunk files ``0000.mp4``/``0.mp4``... read as one
video each) or a list file (one path per line, relative to the list's folder). A video's name is its path relative
to the folder, without the extension.

Defaults follow the Ego4D NLQ convention: 16-frame windows at stride 16 on the video's own frame rate (30 fps),
each seen as the model's frame count (pass ``--clip-length 16`` to feed all 16 frames).

Runs under plain python, torchrun or Slurm (``srun``): videos are dealt round-robin to the processes; bf16 autocast
on CUDA. Resumable: videos finished earlier are skipped. Unreadable videos are skipped and listed in
``bad_videos.csv``.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lavila.data.video import VideoDecodeError, find_chunk_layout
from lavila.evaluation import feature_store as store
from lavila.evaluation.features import FEATURE_KINDS, WindowEncoder, WindowSpec, extract_video
from lavila.utils import distributed as du

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", required=True, help="zoo name, checkpoint path / URL, or registry name")
    m.add_argument("--model-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="named-config overrides (a registry model, e.g. depth=1 embed_dim=32)")
    m.add_argument("--seed", type=int, default=0, help="initialisation seed of a registry model")
    m.add_argument("--trust-checkpoint", action="store_true", help="full unpickling (trusted files only)")
    m.add_argument("--clip-length", type=int, default=None, help="frames the model sees per window (default: "
                   "the model's)")
    m.add_argument("--input-size", type=int, default=None, help="crop size (default: the model's image size)")
    m.add_argument("--norm-style", default=None, choices=["openai", "timm", "lavila"],
                   help="default: the checkpoint's, else openai")
    w = p.add_argument_group("videos and windows")
    w.add_argument("--input", required=True, help="folder of videos, or a list file (one path per line)")
    w.add_argument("--chunk-len", type=float, default=15.0, help="seconds per chunk file of chunked videos")
    w.add_argument("--window", type=int, default=16, help="frames per window (Ego4D NLQ: 16)")
    w.add_argument("--stride", type=int, default=16, help="frames between window starts (Ego4D NLQ: 16)")
    w.add_argument("--fps", type=float, default=None, help="resample to this frame rate first (default: the "
                   "video's own)")
    o = p.add_argument_group("outputs")
    o.add_argument("--output-dir", required=True)
    o.add_argument("--features", default="proj", choices=FEATURE_KINDS,
                   help="proj: projected embedding; pooled: before the projection; tokens: per-frame patch maps")
    o.add_argument("--no-normalize", action="store_true", help="proj features without L2 normalisation")
    o.add_argument("--format", default="pt", choices=["pt", "npy"], help="per-video file format")
    o.add_argument("--text", default=None, help="text file, one query / narration per line: writes their "
                   "embeddings (text_features.pt)")
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    r.add_argument("--decode-threads", type=int, default=1)
    r.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    r.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    r.add_argument("--context-length", type=int, default=None, help="text context length (default: the model's)")
    return p


# ---- model ------------------------------------------------------------------------------------------------------

def load_model(spec: str, clip_length: int | None = None, overrides: dict[str, Any] | None = None,
               seed: int = 0, trusted: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model (eval mode) named by ``spec`` and its data settings ``num_frames``, ``crop``, ``norm``,
    ``context_length``. A registry name (when no such file exists) builds random weights from ``seed``."""
    from lavila import zoo
    from lavila.models import create_model, list_models
    from lavila.models.checkpoint_spec import checkpoint_norm_style
    from lavila.utils.checkpoint import load_checkpoint

    overrides = dict(overrides or {})
    ckpt = None
    if spec in list_models() and not os.path.exists(spec):
        if clip_length is not None:
            overrides["num_frames"] = clip_length
        torch.manual_seed(seed)
        model = create_model(spec, **overrides)
    else:
        entry = zoo.get_entry(spec)
        ckpt = load_checkpoint(zoo.resolve(spec), trusted=trusted)
        name = zoo.infer_model_spec(ckpt, entry)["model"]  # the file's model name, else the zoo entry's
        model = zoo.build_model_from_checkpoint(ckpt, model=name, num_frames=clip_length, **overrides)
    config = getattr(model, "config", {}) or {}
    info = {"num_frames": int(getattr(model, "num_frames", config.get("num_frames", 4))),
            "crop": int(config.get("img_size", 224)),
            "norm": checkpoint_norm_style(ckpt, ("openai", "timm", "lavila")) or "openai",
            "context_length": int(config.get("context_length", 77))}
    return model.eval(), info


def model_from_config(config: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model an extraction used (its ``extract_config.json``), for encoding queries against its features."""
    return load_model(config["model"], config["clip_length"], config["model_overrides"], config["seed"],
                      config.get("trust_checkpoint", False))


# ---- videos -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Video:
    name: str
    source: str
    chunk_len: float  # 0: one file


def _is_chunk_folder(path: Path, chunk_len: float) -> bool:
    try:
        find_chunk_layout(path, chunk_len)
    except VideoDecodeError:
        return False
    return True


def _video_at(path: Path, name: str, chunk_len: float) -> Video:
    if path.is_dir():
        if not _is_chunk_folder(path, chunk_len):
            raise ValueError(f"{path} is a folder without chunk files (0000.mp4 ...)")
        return Video(name.removesuffix(".mp4"), str(path), chunk_len)
    return Video(name, str(path), 0.0)


def list_videos(source: str | os.PathLike, chunk_len: float = 15.0) -> list[Video]:
    """Every video of a folder (recursive; chunk folders are one video) or of a list file, sorted by name."""
    source = Path(source)
    videos: list[Video] = []
    if source.is_file():
        for n, line in enumerate(source.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path = Path(line) if os.path.isabs(line) else source.parent / line
            if not path.exists():
                raise FileNotFoundError(f"{source}:{n}: {path} does not exist")
            name = path.name if path.is_dir() else path.stem
            videos.append(_video_at(path, name, chunk_len))
    elif source.is_dir():
        for folder, dirs, files in os.walk(source, followlinks=True):
            dirs.sort()
            here = Path(folder)
            rel = here.relative_to(source)
            if here != source and _is_chunk_folder(here, chunk_len):
                videos.append(_video_at(here, str(rel), chunk_len))
                dirs.clear()
                continue
            for f in sorted(files):
                if f.lower().endswith(VIDEO_EXTENSIONS):
                    videos.append(Video(str(rel / Path(f).stem) if str(rel) != "." else Path(f).stem,
                                        str(here / f), 0.0))
    else:
        raise FileNotFoundError(f"--input {source} is neither a folder of videos nor a list file")
    videos.sort(key=lambda v: v.name)
    seen: dict[str, str] = {}
    for v in videos:
        if v.name in seen:
            raise ValueError(f"two videos named {v.name!r}: {seen[v.name]} and {v.source} (rename one)")
        seen[v.name] = v.source
    if not videos:
        raise FileNotFoundError(f"no videos found in {source} (extensions {', '.join(VIDEO_EXTENSIONS)}, or "
                                "folders of chunk files)")
    return videos


# ---- run --------------------------------------------------------------------------------------------------------

def _autocast(precision: str, device: torch.device) -> Any:
    if device.type != "cuda" or precision == "fp32":
        return None
    return torch.autocast("cuda", dtype=torch.bfloat16)


def _texts(path: str) -> list[str]:
    texts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"--text {path} holds no text (one query per line)")
    return texts


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Extract every video of this process's share; rank 0 writes the index and the bad-video report."""
    from lavila.data.transforms import VideoTransform
    from lavila.evaluation.zeroshot import encode_texts
    from lavila.train.flags import parse_overrides
    from lavila.utils.logging import progress

    dist = du.init_distributed(args.device)
    try:
        out = Path(args.output_dir)
        videos = list_videos(args.input, args.chunk_len)
        model_spec = str(Path(args.model).resolve()) if os.path.exists(args.model) else args.model
        overrides = parse_overrides(args.model_overrides)
        model, info = load_model(model_spec, args.clip_length, overrides, args.seed, args.trust_checkpoint)
        crop, norm = args.input_size or info["crop"], args.norm_style or info["norm"]
        spec = WindowSpec(args.window, args.stride, info["num_frames"], args.fps)
        config = {"model": model_spec, "model_overrides": overrides, "seed": args.seed,
                  "trust_checkpoint": args.trust_checkpoint, "clip_length": info["num_frames"], "crop": crop,
                  "norm": norm, "window": args.window, "stride": args.stride, "fps": args.fps,
                  "features": args.features, "normalize": not args.no_normalize, "format": args.format,
                  "context_length": args.context_length or info["context_length"]}
        if args.text and not hasattr(model, "encode_text"):
            raise ValueError("--text needs a CLIP model with a text tower; this checkpoint is a classifier")
        store.check_config(out, config, write=du.is_main_process())  # every rank refuses other settings
        model.to(dist.device)
        autocast = _autocast(args.precision, dist.device)
        encoder = WindowEncoder(model, args.features, not args.no_normalize, dist.device, autocast)
        transform = VideoTransform(crop, is_training=False, norm=norm)
        mine = videos[dist.rank::dist.world_size]
        todo = [v for v in mine if not store.is_done(out, v.name, args.format)]
        du.print_main(f"{len(videos)} videos over {dist.world_size} process(es) on {dist.device} (rank 0: "
                      f"{len(mine)}, {len(mine) - len(todo)} done earlier); windows of {args.window} frames, stride "
                      f"{args.stride}, {info['num_frames']} frames each; features: {args.features}")
        bad: list[tuple[str, str, str]] = []
        tic, windows = time.perf_counter(), 0
        bar = progress(todo, total=len(todo), desc="extract", unit="video", every=1)
        for video in bar:
            try:
                result = extract_video(video.source, spec, transform, encoder, args.batch_size, video.chunk_len,
                                       args.decode_threads)
            except (VideoDecodeError, OSError, ValueError) as exc:
                bad.append((video.name, video.source, f"{type(exc).__name__}: {exc}"))
                continue
            store.write_video_features(out, video.name, video.source, video.chunk_len, result, args.features,
                                       args.format)
            windows += len(result["features"])
        seconds = time.perf_counter() - tic
        if args.text:
            texts = _texts(args.text)
            emb = encode_texts(model, texts, dist.device, context_length=config["context_length"],
                               autocast=autocast)
            if du.is_main_process():
                store.write_text_features(out, texts, emb, args.format)
        all_bad = [b for part in du.all_gather_object(bad) for b in part] if dist.distributed else bad
        du.barrier()
        summary = {"videos": len(videos), "extracted_here": len(todo) - len(bad), "bad": len(all_bad),
                   "windows_here": windows, "seconds": seconds,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if du.is_main_process():
            bad_names = {b[0] for b in all_bad}
            store.write_csv(out / store.BAD_FILE, ("video", "source", "reason"), sorted(all_bad))
            done = [v.name for v in videos if v.name not in bad_names and store.is_done(out, v.name, args.format)]
            store.write_index(out, done)
            store.write_json(out / "summary.json", summary)
            du.print_main(f"{len(done)} of {len(videos)} videos in {out / store.INDEX_FILE}"
                          + (f"; {len(all_bad)} skipped, listed in {out / store.BAD_FILE}" if all_bad else ""))
        return summary
    finally:
        du.cleanup_distributed()


def main(argv: list[str] | None = None) -> int:
    from lavila.config import parse_args

    args = parse_args(build_parser(), argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, du.RendezvousTimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
