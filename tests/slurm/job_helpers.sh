# shellcheck shell=bash
# Shared by run_slurm_tests.sh and real_scripts.sh (sourced): result counters and Slurm job polling.
# Needs JOB_TIMEOUT (seconds) set by the caller.
PASSED=0 FAILED=0 SKIPPED=0
pass() { echo "PASSED $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAILED $1: $2"; FAILED=$((FAILED + 1)); }
skip() { echo "SKIPPED $1: $2"; SKIPPED=$((SKIPPED + 1)); }

# Wait for a job by polling squeue (sbatch --wait is slow); prints "STATE EXITCODE RESTARTS"; 0 iff COMPLETED.
wait_job() {
  local j=$1 t0=$SECONDS info st
  while squeue -h -j "$j" 2>/dev/null | grep -q .; do
    if [ $((SECONDS - t0)) -gt "$JOB_TIMEOUT" ]; then scancel "$j"; echo "TIMEOUT"; return 1; fi
    sleep 0.3
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
    sleep 0.3
  done
}

# A requeued job waits ~2 min before it may start again (Slurm's requeue delay); once it is pending again, let it
# start soon so the test does not idle. Runs in the background while wait_job polls. The 5-s pause matters: a job
# restarted within a fraction of a second of its requeue is killed by slurmd ("Job credential revoked").
release_requeued() {
  local j=$1 t0=$SECONDS info
  while [ $((SECONDS - t0)) -lt 200 ]; do
    info=$(scontrol show job -o "$j" 2>/dev/null) || return 0
    if grep -q 'JobState=PENDING' <<<"$info" && ! grep -q 'Restarts=0 ' <<<"$info"; then
      sleep 5
      scontrol update JobId="$j" StartTime=now && return 0
    fi
    sleep 0.5
  done
}

show_log() { echo "---- $1"; tail -n "${2:-40}" "$1" 2>/dev/null | sed 's/^/    /'; }
