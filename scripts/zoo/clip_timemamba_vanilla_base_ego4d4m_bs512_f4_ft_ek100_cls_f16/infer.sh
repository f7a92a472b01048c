#!/usr/bin/env bash
#SBATCH --job-name=clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_cls_f16-infer
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=10
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
# Evaluate zoo row clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_cls_f16 (EK100 CLS).
# Upstream: scripts/cls_ft/run_slurm_finetune_cls_bs512_timemamba_like_timesformer_infer_cls_f16.sh
# Slurm:  sbatch [-p PARTITION] scripts/zoo/clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_cls_f16/infer.sh [engine flags]   (from the repository root;
#         SBATCH_PARTITION / SBATCH_TIMELIMIT also work). Here: bash scripts/zoo/clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_cls_f16/infer.sh [engine flags]
# Variables (data roots, OUTPUT_DIR, CHECKPOINT, DRY_RUN=1 ...): see scripts/_launch.sh.
for LAVILA_ROOT in "${LAVILA_ROOT:-}" "$(dirname "$0")/../../.." "${SLURM_SUBMIT_DIR:-.}"; do
  [ -f "$LAVILA_ROOT/scripts/_launch.sh" ] && break
done
source "$LAVILA_ROOT/scripts/_launch.sh" || { echo "scripts/_launch.sh not found: set LAVILA_ROOT" >&2; exit 2; }
launch cls main_finetune_classification.py configs/zoo/clip_timemamba_vanilla_base_ego4d4m_bs512_f4_ft_ek100_cls_f16/infer.yaml "$@"
