#!/usr/bin/env bash
#SBATCH --job-name=clip_timesformer_vanilla_base_ego4d4m_bs512_f4-egoschema
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=10
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
# Zero-shot EgoSchema of zoo row clip_timesformer_vanilla_base_ego4d4m_bs512_f4.
# Upstream: scripts/egoschema_zs/run_slurm_pretrain_bs512_timesformer_infer_egoschema.sh
# Slurm:  sbatch [-p PARTITION] scripts/zoo/clip_timesformer_vanilla_base_ego4d4m_bs512_f4/infer_egoschema.sh [engine flags]   (from the repository root;
#         SBATCH_PARTITION / SBATCH_TIMELIMIT also work). Here: bash scripts/zoo/clip_timesformer_vanilla_base_ego4d4m_bs512_f4/infer_egoschema.sh [engine flags]
# Variables (data roots, OUTPUT_DIR, CHECKPOINT, DRY_RUN=1 ...): see scripts/_launch.sh.
for LAVILA_ROOT in "${LAVILA_ROOT:-}" "$(dirname "$0")/../../.." "${SLURM_SUBMIT_DIR:-.}"; do
  [ -f "$LAVILA_ROOT/scripts/_launch.sh" ] && break
done
source "$LAVILA_ROOT/scripts/_launch.sh" || { echo "scripts/_launch.sh not found: set LAVILA_ROOT" >&2; exit 2; }
launch zs_egoschema main_pretrain.py configs/zoo/clip_timesformer_vanilla_base_ego4d4m_bs512_f4/infer_egoschema.yaml "$@"
