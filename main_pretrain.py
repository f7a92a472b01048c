"""Ego4D video-language pretraining (CLIP InfoNCE), zero-shot EK100 MIR / EgoSchema evaluation.

Runs the same under `torchrun --nproc_per_node N`, `srun` (Slurm variables) or plain `python` on one CPU/GPU.
Flags keep the reference engines' names; `--config FILE.yaml` supplies defaults, `--help` lists everything.
"""
import sys

from lavila.train.loop import main
from lavila.train.pretrain import PretrainEngine

if __name__ == "__main__":
    sys.exit(main(PretrainEngine()))
