"""Command-line flags shared by the three engines (upstream names and meanings, video-mamba-suite section 4)."""
from __future__ import annotations

import argparse
import os
from typing import Any

import yaml


def _bool_pair(group: argparse._ArgumentGroup, name: str, default: bool, help: str, off: str | None = None) -> None:
    dest = name.replace("-", "_")
    group.add_argument(f"--{name}", dest=dest, action="store_true", help=help)
    group.add_argument(off or f"--no-{name}", dest=dest, action="store_false", help=f"disable --{name}")
    group.set_defaults(**{dest: default})


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default once: appended unless the help already states it (or there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS, False) or action.nargs == 0:
            return text
        return super()._get_help_string(action)


def default_workers() -> int:
    """DataLoader workers per process: the CPUs this process may use, shared by the processes of this node
    (torchrun's LOCAL_WORLD_SIZE, Slurm's SLURM_NTASKS_PER_NODE)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    per_node = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE") or "1"
    try:
        local = max(int(per_node.split("(")[0]), 1)
    except ValueError:
        local = 1
    return max(cpus // local, 1)


class ListModels(argparse.Action):
    """``--list-models``: print the model registry and exit."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="print the model names of --model (with tower and frame count) and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from lavila.models.registry import MODELS

        for name in sorted(MODELS):
            cfg = MODELS[name]
            mixer = f"/{cfg['temporal_mixer']}" if "temporal_mixer" in cfg else ""
            print(f"{name:<36} {cfg['tower']}{mixer}, embed {cfg['embed_dim']}, depth {cfg['depth']}, "
                  f"{cfg['num_frames']} frames")
        parser.exit()


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["embed_dim=64", "depth=2"]`` -> ``{"embed_dim": 64, "depth": 2}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--model-overrides entry {item!r} must look like key=value, e.g. depth=2")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def add_common_args(parser: argparse.ArgumentParser, *, clip_length: int, epochs: int, warmup_epochs: int,
                    batch_size: int, lr: float, wd: float, drop_path_rate: float = 0.0) -> None:
    """Flags every engine takes. Engine-specific defaults are passed in."""
    data = parser.add_argument_group("data")
    data.add_argument("--root", default=None, help="folder of (chunked) training videos")
    data.add_argument("--train-metadata", default=None, help="training annotation file")
    data.add_argument("--val-metadata", default=None, help="evaluation annotation file")
    data.add_argument("--output-dir", default=None,
                      help="checkpoints, config.yaml, metrics.jsonl, log.txt go here; relaunching into it resumes "
                           "(default: work_dirs/<engine>_<model>)")
    data.add_argument("--video-chunk-length", type=float, default=15,
                      help="seconds per video chunk file (<root>/<id>/0000.mp4 ...); 0 for one file per video "
                           "(<root>/<id>.mp4)")
    data.add_argument("--clip-length", "--num-frames", type=int, default=clip_length,
                      help="frames per clip (= model frames); with --evaluate / --resume the checkpoint's")
    data.add_argument("--clip-stride", type=int, default=4, help="accepted; no effect (unused by the reference too)")
    data.add_argument("--input-size", type=int, default=224,
                      help="crop size (224; 336 for *_336PX); with a checkpoint, the checkpoint's")
    data.add_argument("--norm-style", default="openai", choices=["openai", "timm"],
                      help="pixel normalisation constants (CLIP's openai, ImageNet's timm)")
    _bool_pair(data, "fused-decode-crop", False, "scale whole frames in the decoder instead of resizing the crop "
              "(slower with stock decord, see docs/DATA.md; deterministic like the default path, but its pixels "
              "differ slightly from it, so do not switch it when resuming a run). The reference's flag instead "
              "crops inside its patched decord and normalises on the GPU; the same clips up to resampling")
    data.add_argument("--decode-threads", type=int, default=1, help="decoder threads per clip (decord / PyAV)")
    data.add_argument("--video-backend", default="auto", choices=["auto", "decord", "pyav"],
                      help="decoder; auto: PyAV on constant-frame-rate files (it seeks there), else decord, "
                      "each falling back to the other on a file it cannot read")
    data.add_argument("-j", "--workers", type=int, default=default_workers(),
                      help="DataLoader worker processes per process (default: the CPUs available / processes on "
                           f"this node, here {default_workers()}; 0 decodes in the main process)")
    data.add_argument("--skip-policy", default="skip", choices=["skip", "raise"],
                      help="unreadable training sample: skip and count it, or stop with its path")
    data.add_argument("--use-multi-epochs-loader", action="store_true",
                      help="accepted; no effect here (see the start-up note)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default="CLIP_VITB16",
                       help="model name (--list-models); with --pretrain-model / --resume, the checkpoint's")
    model.add_argument("--list-models", action=ListModels)
    model.add_argument("--model-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                       help="override named-config fields, e.g. depth=2 embed_dim=64 (tiny test models)")
    _bool_pair(model, "grad-checkpointing", False, "activation checkpointing in the towers")
    _bool_pair(model, "use-fast-conv1", False, "ViT patch embedding as Linear", off="--disable-fast-conv1")
    _bool_pair(model, "use-flash-attn", False, "flash-attn kernels when installed (SDPA otherwise)",
               off="--disable-flash-attn")
    model.add_argument("--patch-dropout", type=float, default=0.0,
                       help="fraction of patch tokens dropped per training clip (ViT towers, as the reference)")
    model.add_argument("--drop-path-rate", type=float, default=drop_path_rate, help="stochastic depth rate")
    model.add_argument("--pretrain-zoo", default="openai", choices=["openai", "open_clip", "lavila", "deit", "none"],
                       help="pretraining initialisation (main_pretrain.py): CLIP weights, a lavila checkpoint, "
                            "DeiT/Vim, or none = random")
    model.add_argument("--pretrain-path", default=None,
                       help="weights file for --pretrain-zoo: CLIP ViT-B/16 (openai / open_clip), DeiT (ViT / "
                            "TimeSformer) or Vim (ViViM) for deit, a checkpoint for lavila")
    model.add_argument("--project-embed-dim", type=int, default=256, help="size of the joint embedding")
    model.add_argument("--context-length", type=int, default=77,
                       help="text tokens per caption; with a checkpoint, the checkpoint's")
    model.add_argument("--vocab-size", type=int, default=49408, help="text vocabulary size")
    model.add_argument("--resume", default="",
                       help="checkpoint to resume/evaluate (path, zoo name or URL); it describes the model")
    model.add_argument("--resume-anyway", action="store_true",
                       help="auto-resume the run in --output-dir even though its config.yaml differs from these flags")
    model.add_argument("--trust-checkpoint", action="store_true",
                       help="load checkpoints with full unpickling (only for files from a trusted source)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=epochs, help="epochs to train")
    optim.add_argument("--warmup-epochs", type=float, default=warmup_epochs, help="linear warmup from --lr-start")
    optim.add_argument("--start-epoch", type=int, default=0, help="first epoch (without a checkpoint)")
    optim.add_argument("--batch-size", type=int, default=batch_size, help="per process")
    optim.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"], help="optimiser")
    optim.add_argument("--lr", type=float, default=lr, help="peak learning rate (after warmup)")
    optim.add_argument("--fix-lr", action="store_true", help="constant --lr, no warmup")
    optim.add_argument("--lr-start", type=float, default=1e-6, help="warmup start")
    optim.add_argument("--lr-end", type=float, default=1e-5, help="cosine floor")
    optim.add_argument("--update-freq", type=int, default=1, help="gradient accumulation steps")
    optim.add_argument("--wd", type=float, default=wd, help="weight decay")
    optim.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), help="AdamW betas")
    optim.add_argument("--eps", type=float, default=1e-8, help="AdamW epsilon")
    optim.add_argument("--grad-clip-norm", type=float, default=None, help="clip gradients to this norm (default: no "
                       "clipping)")
    optim.add_argument("--disable-amp", action="store_true", help="fp32 on CUDA (CPU always runs fp32)")
    optim.add_argument("--use-bf16", action="store_true", help="bf16 autocast instead of fp16 + GradScaler")
    optim.add_argument("--use-zero", action="store_true",
                       help="shard the optimizer state over the processes (torch ZeroRedundancyOptimizer); "
                            "checkpoints hold the consolidated state and resume with or without it")
    optim.add_argument("--no-use-zero", dest="use_zero", action="store_false", help="disable --use-zero")

    run = parser.add_argument_group("run")
    run.add_argument("--eval-freq", type=int, default=1, help="epochs between evaluations")
    run.add_argument("--print-freq", type=int, default=10, help="steps between progress lines (without a terminal)")
    run.add_argument("--evaluate", action="store_true", help="evaluate only (weights from --resume/--pretrain-model)")
    run.add_argument("--seed", type=int, default=0, help="random seed (initialisation, sampling, augmentation)")
    run.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    run.add_argument("--save-freq", type=int, default=1, help="epochs between checkpoint.pt saves")
    run.add_argument("--dist-timeout", type=float, default=None,
                     help="seconds to wait for the other processes at start-up (default: $LAVILA_DIST_TIMEOUT or 120)")
    # torchrun / the reference's launcher arguments: accepted, the environment decides.
    for flags, kw in ((("--world-size",), {"type": int, "default": 1}), (("--rank",), {"type": int, "default": 0}),
                      (("--local_rank", "--local-rank"), {"type": int, "default": 0, "dest": "local_rank"}),
                      (("--dist-url",), {"default": "env://"}), (("--dist-backend",), {"default": None}),
                      (("--gpu",), {"default": None})):
        run.add_argument(*flags, help=argparse.SUPPRESS, **kw)


# ---------------------------------------------------------------------------------------------------------------------
# Reference-behaviour switches (issue 15, part A). Where this project fixed a reference behaviour that changes a
# trained number, the option's `reference` value (or the value named in the help) reproduces video-mamba-suite; every
# configs/zoo/*/train.yaml selects it, the defaults keep the fix. Table: docs/MODEL_ZOO.md, "Reference behaviour".
# ---------------------------------------------------------------------------------------------------------------------
def add_reference_switches(parser: argparse.ArgumentParser, engine: str) -> None:
    """The switches of ``engine`` (``pretrain``, ``finetune_retrieval``, ``finetune_classification``); the MIR loss
    switch ``--mir-loss-weighting`` lives with the retrieval engine's flags."""
    from lavila.models.registry import DROP_PATH_SCOPES
    from lavila.train.mixup import CUTMIX_VARIANTS
    from lavila.train.optim import WD_RULES

    g = parser.add_argument_group("reference behaviour (docs/MODEL_ZOO.md)")
    g.add_argument("--wd-rule", default="default", choices=WD_RULES,
                   help="weight-decay groups. default: no decay for biases, norms, embeddings (cls/pos/temporal/"
                   "token), logit scale and SSM A_log/D; reference: decay every parameter with ndim >= 2 unless its "
                   "name contains bias/ln/bn/pos_embed/positional_embedding (decays cls_token, temporal embeddings, "
                   "A_log)")
    g.add_argument("--drop-path-scope", default="all", choices=DROP_PATH_SCOPES,
                   help="where --drop-path-rate applies. all: every tower; reference: not in TimeSformer/TimeMamba "
                   "towers (the reference builders never pass the rate to them), ViT and ViViM keep it")
    if engine in ("pretrain", "finetune_retrieval"):
        g.add_argument("--epoch-shuffle", default="each-epoch", choices=["each-epoch", "reference"],
                       help="training sample order. each-epoch: a new shuffle every epoch; reference: epoch 0's order "
                       "in every epoch (the reference's pretraining and MIR engines never call set_epoch)")
    if engine == "pretrain":
        g.add_argument("--deit-patch-bias", default="fold", choices=["fold", "drop"],
                       help="DeiT patch-embedding bias with --pretrain-zoo deit (the towers' patch embedding has no "
                       "bias). fold: add it to the patch position embeddings (exact); drop: discard it (reference)")
        g.add_argument("--pretrain-vim-path", default=None,
                       help="Vim ImageNet weights for a ViViM visual tower under --pretrain-zoo openai/open_clip "
                       "(default: downloaded from the Vim authors' Hugging Face repo, as the reference loads them)")
    if engine == "finetune_classification":
        g.add_argument("--cutmix-variant", default="hw", choices=CUTMIX_VARIANTS,
                       help="hw: cut a box over H x W of every frame; reference: timm's image CutMix on 5-D clips, "
                       "box drawn on H x W but pasted over T x H (lambda from the H x W box)")


# ---- the reference's command lines (issue 15, part B): data-path defaults, flags without effect here ----------

_EK100_ANN = "datasets/EK100/epic-kitchens-100-annotations"
# The reference engines' default data paths (relative to the working directory, as there).
REFERENCE_DATA_PATHS: dict[str, dict[str, str]] = {
    "pretrain": {"root": "datasets/Ego4D/videos_320px_15sec/", "train_metadata": "datasets/Ego4D/ego4d_train.pkl",
                 "root_val": "datasets/EK100/EK100_320p_15sec/",
                 "val_metadata": f"{_EK100_ANN}/retrieval_annotations/EPIC_100_retrieval_test.csv"},
    "finetune_retrieval": {"root": "datasets/EK100/EK100_256p_15sec/",
                           "train_metadata": f"{_EK100_ANN}/retrieval_annotations/EPIC_100_retrieval_train.csv",
                           "val_metadata": f"{_EK100_ANN}/retrieval_annotations/EPIC_100_retrieval_test.csv"},
    "finetune_classification": {"root": "datasets/EK100/EK100_256p_15sec/",
                                "train_metadata": f"{_EK100_ANN}/EPIC_100_train.csv",
                                "val_metadata": f"{_EK100_ANN}/EPIC_100_validation.csv"},
}
_CHUNKS = "a folder of videos cut in --video-chunk-length second chunks (<video_id>/0000.mp4 or <video_id>.mp4/0.mp4)"
DATA_LAYOUT = {
    "root": _CHUNKS, "root_val": _CHUNKS,
    "train_metadata": "the training annotations (Ego4D: the LaViLa .pkl list of (video_uid, start, end, narration); "
                      "EK100: the EPIC-KITCHENS-100 annotation CSV)",
    "val_metadata": "the EPIC-KITCHENS-100 annotation CSV (or the EgoSchema questions JSON)",
}
# Other defaults of the reference engines that differ per engine (flags without effect here; shown as the reference).
REFERENCE_DEFAULTS: dict[str, dict[str, Any]] = {"pretrain": {"clip_stride": 16},
                                                 "finetune_classification": {"clip_stride": 2}}
_ALL_REFERENCE_PATHS = {p for paths in REFERENCE_DATA_PATHS.values() for p in paths.values()}


def absent_reference_default(value: str | None) -> bool:
    """True for one of the reference's default data paths (``datasets/...``) that does not exist here: the
    engines then run without that evaluation set (a training path the run needs is an error, train.startup)."""
    return value in _ALL_REFERENCE_PATHS and not os.path.exists(value)


DATA_FLAGS = {"root": "--root", "root_val": "--root-val", "train_metadata": "--train-metadata",
              "val_metadata": "--val-metadata"}

# Flags that change nothing here, and why (one start-up line each when set).
NO_EFFECT = {
    "use_flash_attn": "attention always runs through torch scaled_dot_product_attention, which picks the flash "
                      "kernel itself where the GPU supports it",
    "use_fast_conv1": "the patch embedding's form (Linear or Conv2d, the same function) is fixed per model, as "
                      "the released checkpoints store it",
    "use_multi_epochs_loader": "DataLoader workers restart each epoch so that every epoch's per-sample seeds reach "
                               "them (the reference only reuses workers for speed)",
    "clip_stride": "clips are sampled as clip-length segment midpoints over the annotated span; the reference "
                   "never reads --clip-stride either",
    "num_crops": "evaluation uses one centre crop (the reference's EK100 datasets ignore --num-crops too; its EGTEA "
                 "fine-tuning takes the crops from the centre crop, so they are all that one)",
    "num_clips": "evaluation uses one clip per segment (the reference's datasets ignore --num-clips too)",
}


def no_effect_notes(args: argparse.Namespace, defaults: dict[str, Any], tower: str | None = None) -> list[str]:
    """One line per flag of :data:`NO_EFFECT` set away from its default (``defaults``: the parser's), saying why;
    and ``--patch-dropout`` on a tower other than the ViT."""
    notes = [f"--{dest.replace('_', '-')} has no effect here: {why}" for dest, why in NO_EFFECT.items()
             if hasattr(args, dest) and getattr(args, dest) != defaults.get(dest)]
    if getattr(args, "patch_dropout", 0.0) > 0 and tower is not None and tower != "vit":
        notes.append(f"--patch-dropout has no effect on the {tower} tower: the reference applies it in the ViT only")
    return notes
