#!/usr/bin/env bash
# One-shot GPU check for a lent machine with a short time budget (how benchmarks/RESULTS.md's GPU figures were made;
# issue 21 part 2: the gpu tests with the kernels built, then bench_gpu.py's train steps, scan-alone timings and the
# issue-21 target rows, every scan backend asserted inside the timed process).
# Every stage has its own time limit and a failed stage does not stop the next one; logs go to $OUT.
#
#   OUT=/tmp/gpu_out WHEELS=dir SDISTS=dir bash benchmarks/gpu_session.sh
#
# WHEELS (optional): wheels for what the machine lacks (PyAV, open_clip_torch for the BPE vocabulary, ftfy, wcwidth),
# installed with --no-index into a private folder. SDISTS (optional): mamba_ssm / causal_conv1d source archives; their
# CUDA kernels are compiled in the background (benchmarks/build_cuda_kernels.py) while the other stages run, then the
# CUDA-kernel stages run if the build finished by BUILD_DEADLINE_S seconds after the start.
set -u
OUT=${OUT:-/tmp/gpu_out}
BUILD_DEADLINE_S=${BUILD_DEADLINE_S:-420}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
T0=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
PY=${PY:-python3}

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nvcc --version 2>/dev/null | tail -1
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
date -u +"%Y-%m-%d %H:%M UTC"

SITE=/tmp/lavila_site
if [ -n "${WHEELS:-}" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl || echo "wheel install failed"
fi
export PYTHONPATH="$PWD:$SITE:${PYTHONPATH:-}"

BUILD_PID=
if [ -n "${SDISTS:-}" ] && ls "$SDISTS"/*.tar.gz >/dev/null 2>&1; then
  stage "building the CUDA kernels in the background (log: build.log)"
  nice -n 10 $PY benchmarks/build_cuda_kernels.py --sdists "$SDISTS" --out /tmp/lavila_kernels \
    --jobs "$(( $(nproc) - 4 ))" >"$OUT/build.log" 2>&1 &
  BUILD_PID=$!
fi

stage "gpu tests (models, scan, engines)"
timeout 240 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_models_forward.py tests/test_ssm.py \
  tests/test_ssm_chunked.py tests/test_engines_gpu.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -15

stage "bench_gpu.py (pure-PyTorch scan)"
timeout 240 $PY benchmarks/bench_gpu.py --steps 3 --warmup 1 --markdown --json "$OUT/bench_gpu_torch.json" 2>&1 | tee "$OUT/bench_gpu_torch.md"

if [ -n "$BUILD_PID" ]; then
  stage "waiting for the kernel build (until ${BUILD_DEADLINE_S} s)"
  while kill -0 "$BUILD_PID" 2>/dev/null && [ $(( $(date +%s) - T0 )) -lt "$BUILD_DEADLINE_S" ]; do sleep 5; done
  if kill -0 "$BUILD_PID" 2>/dev/null; then
    echo "build not finished by the deadline; stopping it"; kill -- "$BUILD_PID" 2>/dev/null
  elif wait "$BUILD_PID"; then
    export PYTHONPATH="/tmp/lavila_kernels/site:$PYTHONPATH"
    $PY -c "from lavila.models.ssm import cuda_scan_available as a; print('mamba_ssm kernels importable:', a())"
    $PY -c "import mamba_ssm, mamba_ssm.ops.selective_scan_interface; print('mamba_ssm', mamba_ssm.__version__)" 2>&1 \
      | tail -3
    stage "gpu scan tests (test_cuda_matches_torch with the kernels) and bench_gpu.py with both backends"
    timeout 90 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_ssm.py tests/test_ssm_chunked.py \
      tests/test_models_forward.py 2>&1 | tee "$OUT/pytest_gpu_kernels.log" | tail -6
    timeout 300 $PY benchmarks/bench_gpu.py --steps 3 --warmup 1 --markdown --json "$OUT/bench_gpu_cuda.json" 2>&1 \
      | tee "$OUT/bench_gpu_cuda.md"
  else
    echo "kernel build failed:"; grep -m5 -i "error" "$OUT/build.log"; tail -5 "$OUT/build.log"
  fi
fi
stage "done"
