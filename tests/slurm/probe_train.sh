#!/usr/bin/env bash
#SBATCH --job-name=lavila-probe
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:10:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
# A row-script twin running tests/slurm/probe_engine.py through scripts/_launch.sh (make test-slurm).
for LAVILA_ROOT in "${LAVILA_ROOT:-}" "$(dirname "$0")/../.." "${SLURM_SUBMIT_DIR:-.}"; do
  [ -f "$LAVILA_ROOT/scripts/_launch.sh" ] && break
done
source "$LAVILA_ROOT/scripts/_launch.sh" || { echo "scripts/_launch.sh not found: set LAVILA_ROOT" >&2; exit 2; }
launch none tests/slurm/probe_engine.py configs/tests/probe.yaml "$@"
