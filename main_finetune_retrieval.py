"""Video-text fine-tuning: EK100 multi-instance retrieval (`--dataset ek100_mir`, default; max-margin loss) or
Charades-Ego (`--dataset charades_ego`; InfoNCE on the trimmed clips of metadata_filtered_train.pkl).

Runs the same under `torchrun --nproc_per_node N`, `srun` (Slurm variables) or plain `python` on one CPU/GPU.
Flags keep the reference engines' names; `--config FILE.yaml` supplies defaults, `--help` lists everything.
"""
import sys

from lavila.train.finetune_retrieval import RetrievalEngine
from lavila.train.loop import main

if __name__ == "__main__":
    sys.exit(main(RetrievalEngine()))
