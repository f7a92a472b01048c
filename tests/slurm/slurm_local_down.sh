#!/usr/bin/env bash
# Stop what slurm_local_up.sh started, by the PIDs it recorded (never by process name).
set -uo pipefail
STATE=${SLURM_CI_STATE:-/run/slurm-ci}

# Cancel jobs first: with proctrack/linuxproc job processes are not slurmd's children and would outlive it.
if [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
  ids=$(squeue -h -o '%i' 2>/dev/null || true)
  if [ -n "$ids" ]; then
    scancel $ids 2>/dev/null || true
    for _ in $(seq 60); do [ -z "$(squeue -h -o '%i' 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi

stop() { # comm-name pidfile; checks /proc/PID/comm so a recycled PID is never hit
  local f="$STATE/$2" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$1" ]; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$f"
}
stop slurmd slurmd.pid
stop slurmctld slurmctld.pid
stop munged munged.pid
rm -rf "$STATE/fakegpu"
