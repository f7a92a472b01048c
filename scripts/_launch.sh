# shellcheck shell=bash
# Shared launcher, sourced by every scripts/zoo/<row>/*.sh (do not run it directly).
#
# launch KIND ENGINE CONFIG [extra engine args...]
#   KIND    pretrain | zs_mir | zs_egoschema | mir | cls   (which data flags to pass)
#   ENGINE  main_pretrain.py | main_finetune_retrieval.py | main_finetune_classification.py | eval_zeroshot.py
#   CONFIG  configs/....yaml (relative to the repository root)
#
# Under Slurm (inside an sbatch/salloc allocation, SLURM_JOB_ID set) it runs one process per task with `srun`;
# otherwise it runs `torchrun --standalone --nproc_per_node=$NPROC_PER_NODE` on this machine
# (plain python when NPROC_PER_NODE=1). Set LAVILA_LOCAL=1 to force the local path inside an allocation.
#
# Variables (all optional; defaults in brackets):
#   DATA_ROOT [datasets]                  EGO4D_ROOT [$DATA_ROOT/Ego4D]   EK100_ROOT [$DATA_ROOT/EK100]
#   EGO4D_VIDEOS [$EGO4D_ROOT/videos_320px_15sec]       EGO4D_TRAIN_METADATA [$EGO4D_ROOT/ego4d_train.pkl]
#   EK100_VIDEOS [$EK100_ROOT/video_320p_15sec]         EK100_ANNOTATIONS [$EK100_ROOT/epic-kitchens-100-annotations]
#   EK100_MIR_TRAIN, EK100_MIR_TEST, EK100_CLS_TRAIN, EK100_CLS_VAL   [under $EK100_ANNOTATIONS]
#   EK100_MIR_RELEVANCY   test relevancy pickle [the engine's default: relevancy/caption_relevancy_<stem>.pkl beside
#                         $EK100_MIR_TEST, else rebuilt in memory]
#   EGOSCHEMA_VIDEOS [$DATA_ROOT/EgoSchema/videos]      EGOSCHEMA_QUESTIONS [$DATA_ROOT/EgoSchema/questions.json]
#   OUTPUT_ROOT [work_dirs]   OUTPUT_DIR [$OUTPUT_ROOT/<row>/<config name>]
#   CHECKPOINT      overrides the checkpoint an infer script evaluates (zoo name, URL or path; --resume)
#   PRETRAIN_MODEL  overrides the checkpoint a fine-tuning script starts from (zoo name, URL or path)
#   PYTHON [.venv/bin/python if present, else python3]   NPROC_PER_NODE [GPUs on this machine, else 1]
#   LAVILA_CONFIG   use this config file instead of the script's (relative to the repository root, or absolute;
#                   e.g. configs/tests/*.yaml for smoke runs)
#   SRUN_ARGS       extra srun options        REQUEUE_ON_SIGNAL [1]   see _lavila_on_signal
#   DRY_RUN=1       print the command (with the cd to the repository root it runs from) instead of running it
# Extra arguments of the script are forwarded to the engine and win over the config file.

set -euo pipefail

LAVILA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

_lavila_data_args() {  # KIND -> the data flags of that engine
  local d=${DATA_ROOT:-datasets}
  local ego=${EGO4D_ROOT:-$d/Ego4D} ek=${EK100_ROOT:-$d/EK100}
  local ann=${EK100_ANNOTATIONS:-$ek/epic-kitchens-100-annotations}
  local ek_videos=${EK100_VIDEOS:-$ek/video_320p_15sec}
  local mir_test=${EK100_MIR_TEST:-$ann/retrieval_annotations/EPIC_100_retrieval_test.csv}
  # --relevancy-path only when asked for: the engines' default already follows $EK100_MIR_TEST
  local -a rel=()
  [ -n "${EK100_MIR_RELEVANCY:-}" ] && rel=(--relevancy-path "$EK100_MIR_RELEVANCY")
  case $1 in
    pretrain) DATA_ARGS=(--root "${EGO4D_VIDEOS:-$ego/videos_320px_15sec}"
                         --train-metadata "${EGO4D_TRAIN_METADATA:-$ego/ego4d_train.pkl}"
                         --root-val "$ek_videos" --val-metadata "$mir_test" "${rel[@]}") ;;
    zs_mir) DATA_ARGS=(--root-val "$ek_videos" --val-metadata "$mir_test" "${rel[@]}") ;;
    zs_egoschema) DATA_ARGS=(--root-val "${EGOSCHEMA_VIDEOS:-$d/EgoSchema/videos}"
                             --val-metadata "${EGOSCHEMA_QUESTIONS:-$d/EgoSchema/questions.json}") ;;
    mir) DATA_ARGS=(--root "$ek_videos"
                    --train-metadata "${EK100_MIR_TRAIN:-$ann/retrieval_annotations/EPIC_100_retrieval_train.csv}"
                    --val-metadata "$mir_test" "${rel[@]}") ;;
    cls) DATA_ARGS=(--root "$ek_videos" --train-metadata "${EK100_CLS_TRAIN:-$ann/EPIC_100_train.csv}"
                    --val-metadata "${EK100_CLS_VAL:-$ann/EPIC_100_validation.csv}") ;;
    none) DATA_ARGS=() ;;
    *) echo "_launch.sh: unknown kind '$1' (pretrain|zs_mir|zs_egoschema|mir|cls|none)" >&2; return 2 ;;
  esac
}

_lavila_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x "$LAVILA_ROOT/.venv/bin/python" ]; then echo "$LAVILA_ROOT/.venv/bin/python"
  else command -v python3 || command -v python; fi
}

_lavila_check_python() {  # PY: it must import torch (a system python3 without the environment does not)
  "$1" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" >/dev/null 2>&1 && return 0
  echo "launch: $1 cannot import torch (no $LAVILA_ROOT/.venv found, so the system python was used): create the" \
       "environment (make venv) or set PYTHON=/path/to/env/bin/python" >&2
  return 2
}

_lavila_local_nproc() {
  if [ -n "${NPROC_PER_NODE:-}" ]; then echo "$NPROC_PER_NODE"; return; fi
  local n=0
  command -v nvidia-smi >/dev/null 2>&1 && n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  echo $(( n > 0 ? n : 1 ))
}

launch() {
  local kind=$1 engine=$2 config=${LAVILA_CONFIG:-$3}; shift 3
  local row; row=$(basename "$(dirname "$config")")
  local name; name=$(basename "$config" .yaml)
  local config_path=$config
  [[ $config = /* ]] || config_path=$LAVILA_ROOT/$config
  [ -f "$config_path" ] || { echo "launch: config not found: $config_path" >&2; return 2; }
  [ -f "$LAVILA_ROOT/$engine" ] || [ -n "${DRY_RUN:-}" ] || {
    echo "launch: engine not found: $LAVILA_ROOT/$engine" >&2; return 2; }
  _lavila_data_args "$kind"
  local out=${OUTPUT_DIR:-${OUTPUT_ROOT:-work_dirs}/$row/$name}
  local -a args=(--config "$config" --output-dir "$out" "${DATA_ARGS[@]}")
  [ -n "${CHECKPOINT:-}" ] && args+=(--resume "$CHECKPOINT")
  [ -n "${PRETRAIN_MODEL:-}" ] && args+=(--pretrain-model "$PRETRAIN_MODEL")
  args+=("$@")

  local py; py=$(_lavila_python)
  local -a cmd
  if [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${LAVILA_LOCAL:-}" ]; then
    # One process per Slurm task; lavila.utils.distributed reads SLURM_PROCID/NTASKS/NODELIST.
    cmd=(srun --kill-on-bad-exit=1 ${SRUN_ARGS:-} "$py" -u "$engine" "${args[@]}")
  else
    local n; n=$(_lavila_local_nproc)
    if [ "$n" -gt 1 ]; then
      cmd=("$py" -m torch.distributed.run --standalone --nproc_per_node="$n" "$engine" "${args[@]}")
    else
      cmd=("$py" -u "$engine" "${args[@]}")
    fi
  fi
  if [ -n "${DRY_RUN:-}" ]; then
    printf 'cd %q && ' "$LAVILA_ROOT"; printf '%q ' "${cmd[@]}"; echo
    _lavila_check_python "$py" || true  # a note on stderr; the printed command is still useful
    return 0
  fi
  _lavila_check_python "$py" || return 2
  cd "$LAVILA_ROOT"
  mkdir -p "$out"
  export PYTHONPATH="$LAVILA_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  echo "[launch] $(date -u +%FT%TZ) ${SLURM_JOB_ID:+slurm job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) }$(printf '%q ' "${cmd[@]}")"
  # Not exec: the batch shell stays to handle the preemption signal that the row scripts ask for with
  # `#SBATCH --signal=B:USR1@120`: it forwards USR1 to the training processes (the engines then save checkpoint.pt at
  # the next step and exit), waits for them (at most REQUEUE_GRACE_S [100] s) and requeues the job
  # (REQUEUE_ON_SIGNAL=0: only forward). On restart the engine auto-resumes from <output-dir>/checkpoint.pt.
  "${cmd[@]}" &
  LAVILA_CHILD=$!
  trap '_lavila_on_signal USR1' USR1
  trap '_lavila_on_signal TERM' TERM
  local rc=0
  wait "$LAVILA_CHILD" || rc=$?
  while kill -0 "$LAVILA_CHILD" 2>/dev/null; do rc=0; wait "$LAVILA_CHILD" || rc=$?; done  # a trap ends wait early
  return "$rc"
}

_lavila_on_signal() {
  echo "[launch] $(date -u +%FT%TZ) got SIG$1${SLURM_JOB_ID:+ in slurm job $SLURM_JOB_ID}; forwarding it" >&2
  kill -"$1" "$LAVILA_CHILD" 2>/dev/null || true
  if [ "$1" = USR1 ] && [ -n "${SLURM_JOB_ID:-}" ] && [ "${REQUEUE_ON_SIGNAL:-1}" = 1 ]; then
    local t0=$SECONDS
    while kill -0 "$LAVILA_CHILD" 2>/dev/null && [ $((SECONDS - t0)) -lt "${REQUEUE_GRACE_S:-100}" ]; do sleep 1; done
    echo "[launch] requeueing slurm job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID"
  fi
}
