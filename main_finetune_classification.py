"""Action classification fine-tuning: EK100 (`--dataset ek100_cls`, default) or EGTEA Gaze+ (`--dataset egtea`).

Runs the same under `torchrun --nproc_per_node N`, `srun` (Slurm variables) or plain `python` on one CPU/GPU.
Flags keep the reference engines' names; `--config FILE.yaml` supplies defaults, `--help` lists everything.
"""
import sys

from lavila.train.finetune_classification import ClassificationEngine
from lavila.train.loop import main

if __name__ == "__main__":
    sys.exit(main(ClassificationEngine()))
