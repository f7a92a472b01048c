"""Build mamba_ssm's selective-scan and causal_conv1d's CUDA kernels offline, for the local GPU only.

For a GPU machine where ``pip install mamba-ssm causal-conv1d --no-build-isolation`` is not an option: no internet
(their setup scripts first try to download a prebuilt wheel), or an nvcc whose architecture list differs from the
one the packages hard-code. Takes the two source archives (``pip download --no-deps --no-binary :all:
--no-build-isolation mamba-ssm causal-conv1d`` on a machine with internet), compiles each extension with
``torch.utils.cpp_extension`` for the compute capability of GPU 0 alone (one architecture instead of six: several
times faster), and lays out a folder to put on ``PYTHONPATH``::

    python benchmarks/build_cuda_kernels.py --sdists DIR --out /tmp/kernels --jobs 12
    export PYTHONPATH=/tmp/kernels/site:$PYTHONPATH   # then lavila's scan backend 'cuda' is available

Compiler flags are the packages' own (fast math, relaxed constexpr, half/bf16 operators) minus their arch list.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

NVCC_FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
              "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo"]
EXTENSIONS = {  # module name: (package, source folder, sources, python package copied to site/)
    "selective_scan_cuda": ("mamba_ssm", "csrc/selective_scan",
                            ["selective_scan.cpp"] + [f"selective_scan_fwd_{t}.cu" for t in ("fp32", "fp16", "bf16")]
                            + [f"selective_scan_bwd_{t}_{k}.cu" for t in ("fp32", "fp16", "bf16")
                               for k in ("real", "complex")]),
    "causal_conv1d_cuda": ("causal_conv1d", "csrc",
                           ["causal_conv1d.cpp", "causal_conv1d_fwd.cu", "causal_conv1d_bwd.cu",
                            "causal_conv1d_update.cu"]),
}


def _unpack(sdists: Path, package: str, work: Path) -> Path:
    archives = sorted(sdists.glob(f"{package.replace('_', '?')}-*.tar.gz"))
    if not archives:
        raise SystemExit(f"no {package}-*.tar.gz in {sdists}; fetch it with `pip download --no-deps --no-binary "
                         f":all: --no-build-isolation {package.replace('_', '-')}` where there is internet")
    with tarfile.open(archives[-1]) as tar:
        tar.extractall(work, filter="data")
    return work / archives[-1].name[: -len(".tar.gz")]


def _compile(name: str, src: Path, sources: list[str], build: Path, arch: str) -> None:
    """Runs in a child process (one per extension, so both compile at once)."""
    from torch.utils.cpp_extension import load

    build.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    load(name=name, sources=[str(src / s) for s in sources], build_directory=str(build),
         extra_cflags=["-O3", "-std=c++17"],
         extra_cuda_cflags=NVCC_FLAGS + [f"-gencode=arch=compute_{arch},code=sm_{arch}"],
         extra_include_paths=[str(src)], verbose=False)
    print(f"built {name} for sm_{arch} in {time.time() - t0:.0f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sdists", type=Path, required=True, help="folder with mamba_ssm-*.tar.gz, causal_conv1d-*.tar.gz")
    p.add_argument("--out", type=Path, required=True, help="output folder; put OUT/site on PYTHONPATH")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 4, help="parallel compile jobs (all extensions)")
    p.add_argument("--only", choices=sorted(EXTENSIONS), default=None, help="build one extension")
    p.add_argument("--child", nargs=3, metavar=("NAME", "SRC", "ARCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        name, src, arch = args.child
        _compile(name, Path(src), EXTENSIONS[name][2], args.out / "build" / name, arch)
        return

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("build_cuda_kernels: no CUDA device (the kernels are built for the local GPU's architecture)")
    major, minor = torch.cuda.get_device_capability(0)
    arch = f"{major}{minor}"
    site, work = args.out / "site", args.out / "src"
    site.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    names = [args.only] if args.only else list(EXTENSIONS)
    children = []
    for name in names:
        package, folder, _ = EXTENSIONS[name]
        root = _unpack(args.sdists, package, work)
        shutil.copytree(root / package, site / package, dirs_exist_ok=True)
        env = dict(os.environ, MAX_JOBS=str(max(1, args.jobs // len(names))))
        children.append((name, subprocess.Popen([sys.executable, __file__, "--sdists", str(args.sdists), "--out",
                                                 str(args.out), "--child", name, str(root / folder), arch], env=env)))
    failed = [name for name, proc in children if proc.wait() != 0]
    for name in names:
        if name not in failed:
            for so in (args.out / "build" / name).glob(f"{name}*.so"):
                shutil.copy2(so, site / so.name)
    if failed:
        raise SystemExit(f"build_cuda_kernels: failed to build {', '.join(failed)} (see the compiler output above)")
    print(f"done: export PYTHONPATH={site}:$PYTHONPATH")


if __name__ == "__main__":
    main()
