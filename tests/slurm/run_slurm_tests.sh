#!/usr/bin/env bash
# make test-slurm: a real single-node Slurm cluster (Debian packages) runs this project's sbatch scripts.
#   1. a 2-task batch job sees 2 ranks                       (cluster sanity)
#   2. a row-twin script (probe engine) under sbatch: 2 ranks, gloo, checkpoint + metrics written
#   3. the same job gets the preemption signal (USR1 to the batch shell): it requeues and resumes from checkpoint.pt
#   4. scripts/submitit_launch.py runs a 2-task job (env and shared-file rendezvous)
#   5. one real train script and 6. one real infer script of the zoo, with a tiny config on generated data
#   7. a real train script signalled mid-run resumes from its checkpoint
# Skips (exit 0, "SKIP" line) when Slurm cannot be installed; never fakes a pass. The cluster is always torn down.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/tests/slurm"
PY=${PYTHON:-$ROOT/.venv/bin/python}
W=${SLURM_TEST_DIR:-$(mktemp -d /tmp/lavila-slurm.XXXXXX)}
JOB_TIMEOUT=${JOB_TIMEOUT:-300}
# shellcheck source=tests/slurm/job_helpers.sh
source "$HERE/job_helpers.sh"
summary() { echo "$PASSED passed, $FAILED failed${SKIPPED:+, $SKIPPED skipped} (work dir $W)"; }

if [ "$(id -u)" != 0 ]; then
  echo "SKIP: make test-slurm needs root to install and start slurmctld/slurmd/munge"; summary; exit 0
fi
mkdir -p "$W"
echo "== starting the cluster (FAKE_GPUS=8 FAKE_CPUS=80: the 8-GPU sbatch headers submit unchanged)"
FAKE_GPUS=8 FAKE_CPUS=80 bash "$HERE/slurm_local_up.sh"
rc=$?
if [ $rc = 3 ]; then
  echo "SKIP: Slurm packages (slurmctld slurmd slurm-client munge) cannot be installed here"; summary; exit 0
elif [ $rc != 0 ]; then
  bash "$HERE/slurm_local_down.sh"; fail cluster "slurm_local_up.sh exited $rc"; summary; exit 1
fi
trap 'echo "== tearing the cluster down"; bash "$HERE/slurm_local_down.sh"' EXIT

json_get() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }

SB=(sbatch --parsable --chdir="$ROOT" --ntasks-per-node=2 --cpus-per-task=1 --time=00:15:00)
cd "$ROOT"

# 1 ---------------------------------------------------------------------------------------------------------------
j=$(sbatch --parsable --ntasks=2 --output="$W/ranks-%j.out" --wrap 'srun hostname') &&
  r=$(wait_job "$j") && [ "$(wc -l < "$W/ranks-$j.out")" = 2 ] && pass "cluster: 2-task batch job ($r)" ||
  fail "cluster: 2-task batch job" "${r:-sbatch refused}"

# 2 ---------------------------------------------------------------------------------------------------------------
out="$W/probe"
j=$(OUTPUT_DIR="$out" "${SB[@]}" --output="$W/probe-%j.out" tests/slurm/probe_train.sh --epoch-seconds 0.2)
if r=$(wait_job "$j") && [ "$(json_get "$out/metrics.json" '["world_size"]')" = 2 ] && [ -f "$out/checkpoint.pt" ]; then
  pass "sbatch row-twin script: 2 ranks over gloo, checkpoint.pt + metrics.json ($r)"
else
  fail "sbatch row-twin script" "${r:-}"; show_log "$W/probe-$j.out"
fi

# 3 ---------------------------------------------------------------------------------------------------------------
out="$W/probe_signal"
j=$(OUTPUT_DIR="$out" REQUEUE_GRACE_S=1 "${SB[@]}" --output="$W/probe-signal-%j.out" tests/slurm/probe_train.sh \
    --epochs 6 --epoch-seconds 1.5)
if wait_file "$out/checkpoint.pt" 120 "$j"; then
  scancel --signal=USR1 --batch "$j"   # what --signal=B:USR1@120 sends before the time limit / on preemption
  release_requeued "$j" &
  r=$(wait_job "$j")
  if [ "${r%% *}" = COMPLETED ] && [ "$(json_get "$out/metrics.json" '["restart_count"]')" -ge 1 ] &&
     [ "$(json_get "$out/metrics.json" '["resumed_from"]')" -ge 1 ] && grep -q "requeueing slurm job $j" "$W/probe-signal-$j.out"; then
    pass "signalled job requeues and resumes from checkpoint.pt ($r, resumed at epoch $(json_get "$out/metrics.json" '["resumed_from"]'))"
  else
    fail "signalled job resumes" "${r:-}"; show_log "$W/probe-signal-$j.out" 40
  fi
else
  fail "signalled job resumes" "no checkpoint.pt within 120 s"; show_log "$W/probe-signal-$j.out"; scancel "$j"
fi

# 4 ---------------------------------------------------------------------------------------------------------------
for rdv in env file; do
  out="$W/submitit_$rdv"
  if timeout "$JOB_TIMEOUT" "$PY" scripts/submitit_launch.py --engine tests/slurm/probe_engine.py --nodes 1 --ngpus 2 \
       --gpus 0 --cpus-per-task 1 --timeout 10 --rendezvous "$rdv" --job-dir "$W/submitit/%j" --wait \
       -- --config configs/tests/probe.yaml --output-dir "$out" --epoch-seconds 0.2 > "$W/submitit_$rdv.log" 2>&1 &&
     [ "$(json_get "$out/metrics.json" '["world_size"]')" = 2 ]; then
    pass "submitit launcher ($rdv rendezvous): 2-task job completed, $(grep -c 'done' "$W/submitit_$rdv.log") rank results"
  else
    fail "submitit launcher ($rdv rendezvous)" "see $W/submitit_$rdv.log"; show_log "$W/submitit_$rdv.log"
  fi
done

# 5-7: the real zoo scripts ------------------------------------------------------------------------------------------
bash "$HERE/real_scripts.sh" "$W"
rc=$?
PASSED=$((PASSED + $(cat "$W/real.passed" 2>/dev/null || echo 0)))
FAILED=$((FAILED + $(cat "$W/real.failed" 2>/dev/null || echo 0)))
SKIPPED=$((SKIPPED + $(cat "$W/real.skipped" 2>/dev/null || echo 0)))
[ $rc = 0 ] || [ -f "$W/real.failed" ] || FAILED=$((FAILED + 1))

summary
if [ "$FAILED" = 0 ]; then
  # keep the work dir (logs, outputs) only when something failed, or when asked for with SLURM_TEST_DIR / KEEP_WORK=1
  [ -n "${SLURM_TEST_DIR:-}" ] || [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$W"
  exit 0
fi
exit 1
