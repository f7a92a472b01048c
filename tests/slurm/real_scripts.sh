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
P=0 F=0 S=0
pass() { echo "PASSED $1"; P=$((P + 1)); }
fail() { echo "FAILED $1: $2"; F=$((F + 1)); }
skip() { echo "SKIPPED $1: $2"; S=$((S + 1)); }
finish() { echo $P > "$W/real.passed"; echo $F > "$W/real.failed"; echo $S > "$W/real.skipped"; exit 0; }
wait_job() {
  local j=$1 t0=$SECONDS info st
  while squeue -h -j "$j" 2>/dev/null | grep -q .; do
    if [ $((SECONDS - t0)) -gt "$JOB_TIMEOUT" ]; then scancel "$j"; echo "TIMEOUT"; return 1; fi
    sleep 0.5
  done
  info=$(scontrol show job -o "$j")
  st=$(grep -o 'JobState=[A-Z_]*' <<<"$info" | cut -d= -f2)
  echo "$st $(grep -o ' ExitCode=[0-9:]*' <<<"$info" | cut -d= -f2) restarts=$(grep -o 'Restarts=[0-9]*' <<<"$info" | cut -d= -f2)"
  [ "$st" = COMPLETED ]
}
# Wait until a running job (id $3) has written a file (its checkpoint); 1 if the job ended or $2 s passed first.
wait_file() {
  local t0=$SECONDS
  while [ ! -f "$1" ]; do
    { [ $((SECONDS - t0)) -gt "$2" ] || ! squeue -h -j "$3" 2>/dev/null | grep -q .; } && return 1
    sleep 0.5
  done
}
# A requeued job waits ~2 min before it may start again (Slurm's requeue delay); once it is pending again, let it
# start now so the test does not idle. Runs in the background while wait_job polls.
release_requeued() {
  local j=$1 t0=$SECONDS info
  while [ $((SECONDS - t0)) -lt 200 ]; do
    info=$(scontrol show job -o "$j" 2>/dev/null) || return 0
    if grep -q 'JobState=PENDING' <<<"$info" && ! grep -q 'Restarts=0 ' <<<"$info"; then
      scontrol update JobId="$j" StartTime=now && return 0
    fi
    sleep 0.5
  done
}
show_log() { echo "---- $1"; tail -n "${2:-40}" "$1" 2>/dev/null | sed 's/^/    /'; }
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
