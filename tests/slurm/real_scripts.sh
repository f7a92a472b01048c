#!/usr/bin/env bash
# Part of make test-slurm (called by run_slurm_tests.sh with a running cluster): the real zoo scripts under sbatch,
# with a tiny config (LAVILA_CONFIG) on generated data (lavila.data.synthetic), 2 tasks on the one node, CPU + gloo.
# Writes the counts to $W/real.{passed,failed,skipped}.
set -uo pipefail
W=$1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
JOB_TIMEOUT=${JOB_TIMEOUT:-300}
ROW=${SLURM_TEST_ROW:-clip_timesformer_vanilla_base_ego4d4m_bs512_f4}
# shellcheck source=tests/slurm/job_helpers.sh
source "$(dirname "$0")/job_helpers.sh"
finish() { echo $PASSED > "$W/real.passed"; echo $FAILED > "$W/real.failed"; echo $SKIPPED > "$W/real.skipped"; exit 0; }
cd "$ROOT"

missing=()
for f in main_pretrain.py lavila/data/synthetic.py; do [ -f "$f" ] || missing+=("$f"); done
if [ ${#missing[@]} -gt 0 ]; then
  for t in "real train script" "real infer script" "real train script signalled"; do
    skip "$t" "not written yet: ${missing[*]}"
  done
  finish
fi

D="$W/data"
if ! "$PY" -m lavila.data.synthetic --out "$D" --seed 0 --ego4d-videos 4 --ek100-train-videos 2 --ek100-test-videos 2 \
     --egoschema-questions 2 --video-sec 16 --height 48 --width 64 > "$W/synthetic.log" 2>&1; then
  fail "generated data" "see $W/synthetic.log"; show_log "$W/synthetic.log"; finish
fi
export EGO4D_VIDEOS=$D/ego4d/videos EGO4D_TRAIN_METADATA=$D/ego4d/ego4d_train.pkl EK100_VIDEOS=$D/ek100/videos \
       EK100_ANNOTATIONS=$D/ek100/epic-kitchens-100-annotations \
       EGOSCHEMA_VIDEOS=$D/egoschema/videos EGOSCHEMA_QUESTIONS=$D/egoschema/questions.json
SB=(sbatch --parsable --chdir="$ROOT" --ntasks-per-node=2 --gpus-per-node=2 --cpus-per-task=1 --time=00:20:00)

# 5: real train script, unchanged #SBATCH headers except the task count --------------------------------------------
out="$W/train"
j=$(OUTPUT_DIR="$out" LAVILA_CONFIG=configs/tests/pretrain_tiny.yaml "${SB[@]}" --output="$W/train-%j.out" \
    "scripts/zoo/$ROW/train.sh")
if r=$(wait_job "$j") && [ -f "$out/checkpoint.pt" ]; then
  pass "sbatch scripts/zoo/$ROW/train.sh (tiny config): checkpoint.pt written ($r)"
else
  fail "sbatch scripts/zoo/$ROW/train.sh" "${r:-sbatch refused}"; show_log "$W/train-$j.out"
fi

# 6: real infer script on that checkpoint ------------------------------------------------------------------------------
if [ -f "$out/checkpoint.pt" ]; then
  iout="$W/infer"
  j=$(OUTPUT_DIR="$iout" CHECKPOINT="$out/checkpoint.pt" LAVILA_CONFIG=configs/tests/infer_tiny.yaml "${SB[@]}" \
      --output="$W/infer-%j.out" "scripts/zoo/$ROW/infer.sh")
  if r=$(wait_job "$j") && metrics=$(grep -l -E '"[a-z_]*avg_map"' "$iout"/*.json* 2>/dev/null | head -1) &&
     [ -n "$metrics" ]; then
    pass "sbatch scripts/zoo/$ROW/infer.sh: MIR metrics in $(basename "$metrics"): $(grep -o -E '"[a-z_]*avg_map": [0-9.]+' "$metrics" | tail -1) ($r)"
  else
    fail "sbatch scripts/zoo/$ROW/infer.sh" "${r:-} no metrics JSON in $iout"; show_log "$W/infer-$j.out"
  fi
else
  skip "real infer script" "no checkpoint from the train script"
fi

# 7: real train script, preemption signal mid-run -> requeue -> resume ---------------------------------------------
out="$W/train_signal"
j=$(OUTPUT_DIR="$out" LAVILA_CONFIG=configs/tests/pretrain_tiny.yaml "${SB[@]}" \
    --output="$W/train-signal-%j.out" "scripts/zoo/$ROW/train.sh" --epochs 3)
if wait_file "$out/checkpoint.pt" "$JOB_TIMEOUT" "$j"; then
  scancel --signal=USR1 --batch "$j"   # what --signal=B:USR1@120 sends before the time limit / on preemption
  release_requeued "$j" &
  r=$(wait_job "$j")
  ep=$("$PY" -c "import sys,torch; print(torch.load(sys.argv[1], weights_only=False)['epoch'])" "$out/checkpoint.pt")
  if [ "${r%% *}" = COMPLETED ] && [[ "$r" != *restarts=0* ]] && [ "$ep" = 3 ] &&
     grep -q 'stopped by signal' "$W/train-signal-$j.out" && grep -qi 'resuming from' "$W/train-signal-$j.out"; then
    pass "signalled real train job requeued and resumed from checkpoint.pt ($r, final epoch $ep)"
  else
    fail "signalled real train job" "${r:-} final epoch ${ep:-?}"; show_log "$W/train-signal-$j.out" 60
  fi
else
  fail "signalled real train job" "no checkpoint.pt within $JOB_TIMEOUT s"; show_log "$W/train-signal-$j.out"; scancel "$j"
fi
finish
