#!/usr/bin/env bash
#SBATCH --job-name=clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_mir_f16-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=72:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
# Train zoo row clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_mir_f16 (CLIP_TimeMamba_like_timesformer, 16 frames).
# Upstream: scripts/mir_ft/run_slurm_finetune_mir_bs512_timemamba_like_timesformer.sh
# Slurm:  sbatch [-p PARTITION] scripts/zoo/clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_mir_f16/train.sh [engine flags]   (from the repository root;
#         SBATCH_PARTITION / SBATCH_TIMELIMIT also work). Here: bash scripts/zoo/clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_mir_f16/train.sh [engine flags]
# Variables (data roots, OUTPUT_DIR, CHECKPOINT, DRY_RUN=1 ...): see scripts/_launch.sh.
for LAVILA_ROOT in "${LAVILA_ROOT:-}" "$(dirname "$0")/../../.." "${SLURM_SUBMIT_DIR:-.}"; do
  [ -f "$LAVILA_ROOT/scripts/_launch.sh" ] && break
done
source "$LAVILA_ROOT/scripts/_launch.sh" || { echo "scripts/_launch.sh not found: set LAVILA_ROOT" >&2; exit 2; }
launch mir main_finetune_retrieval.py configs/zoo/clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_mir_f16/train.yaml "$@"
