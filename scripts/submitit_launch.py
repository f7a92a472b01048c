#!/usr/bin/env python
"""Multi-node Slurm launcher (submitit) for the engines, with requeue on preemption and time-out.

    python scripts/submitit_launch.py --engine main_pretrain.py --nodes 4 --ngpus 8 --partition gpu \\
        --job-dir /shared/$USER/lavila/%j -- --config configs/zoo/<row>/train.yaml --output-dir /shared/.../run1

Everything after ``--`` goes to the engine. One Slurm task per GPU; every task runs the engine in-process with the
torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) set from submitit's job environment.
On preemption or time-out submitit calls ``checkpoint()``, which requeues the same job; the engine then auto-resumes
from ``<output-dir>/checkpoint.pt``.

Rendezvous (``--rendezvous``): ``env`` (default) uses the first node of the allocation and a port derived from the
job id; ``file`` lets rank 0 publish ``host:port`` (a free port it picked) in a file under ``--shared-dir`` (default:
the job folder), which every node must see, for clusters where derived ports collide.
"""
from __future__ import annotations

import argparse
import os
import runpy
import socket
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    engine_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, engine_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True, help="main_pretrain.py, main_finetune_retrieval.py, ... (repo-relative)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--ngpus", type=int, default=8, help="GPUs (= tasks) per node")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs requested per node (default --ngpus; 0 for CPU-only tasks)")
    p.add_argument("--cpus-per-task", type=int, default=10)
    p.add_argument("--mem-per-gpu-gb", type=int, default=None, help="memory per task in GB (default: none requested)")
    p.add_argument("--timeout", type=int, default=2880, help="minutes")
    p.add_argument("--partition", default=None)
    p.add_argument("--constraint", default=None)
    p.add_argument("--comment", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--job-name", default=None)
    p.add_argument("--job-dir", default=os.environ.get("LAVILA_JOB_DIR", "work_dirs/submitit/%j"),
                   help="submitit folder (logs, pickles); must be on a filesystem all nodes share. %%j = job id")
    p.add_argument("--rendezvous", choices=("env", "file"), default="env")
    p.add_argument("--shared-dir", default=None, help="for --rendezvous file (default: the job folder)")
    p.add_argument("--signal-delay-s", type=int, default=120, help="seconds before the time limit to checkpoint")
    p.add_argument("--max-requeues", type=int, default=30)
    p.add_argument("--cluster", default=None, help="submitit cluster: slurm (default auto), local or debug")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    args = p.parse_args(argv)
    if not (REPO_ROOT / args.engine).is_file() and not Path(args.engine).is_file():
        p.error(f"--engine {args.engine}: no such file (relative to {REPO_ROOT} or the current directory)")
    return args, engine_args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Trainer:
    """The submitted callable: runs the engine in every task; ``checkpoint()`` requeues it."""

    def __init__(self, engine: str, engine_args: list[str], rendezvous: str = "env", shared_dir: str | None = None):
        self.engine, self.engine_args = engine, list(engine_args)
        self.rendezvous, self.shared_dir = rendezvous, shared_dir

    def _setup_env(self) -> None:
        import submitit

        env = submitit.JobEnvironment()
        os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank))
        if env.num_tasks == 1:
            return
        attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
        if self.rendezvous == "file":
            folder = Path(self.shared_dir or env.paths.folder)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"rendezvous_{env.job_id}_{attempt}.txt"
            if env.global_rank == 0:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(f"{socket.gethostname()}:{_free_port()}")
                os.replace(tmp, path)
            deadline = time.time() + 600
            while not path.is_file():
                if time.time() > deadline:
                    raise TimeoutError(f"rank 0 did not publish {path} within 600 s (is --shared-dir shared?)")
                time.sleep(0.5)
            host, port = path.read_text().strip().rsplit(":", 1)
        else:
            host = env.hostnames[0]
            port = str(20000 + (int(str(env.job_id).split("_")[0]) + int(attempt)) % 20000)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = host, port

    def __call__(self) -> str:
        self._setup_env()
        engine = self.engine if Path(self.engine).is_absolute() else str(REPO_ROOT / self.engine)
        os.chdir(REPO_ROOT)
        sys.path.insert(0, str(REPO_ROOT))
        sys.argv = [engine, *self.engine_args]
        try:
            runpy.run_path(engine, run_name="__main__")
        except SystemExit as exc:  # engines may sys.exit(0) at the end
            if exc.code not in (None, 0):
                raise
        return f"rank {os.environ.get('RANK', '0')} done"

    def checkpoint(self):  # called by submitit on preemption / time-out: requeue the same work
        import submitit

        print(f"[submitit_launch] requeueing {self.engine}; it resumes from <output-dir>/checkpoint.pt", flush=True)
        return submitit.helpers.DelayedSubmission(Trainer(self.engine, self.engine_args, self.rendezvous,
                                                          self.shared_dir))


def main(argv: list[str] | None = None) -> int:
    import submitit

    args, engine_args = parse_args(argv)
    executor = submitit.AutoExecutor(folder=args.job_dir, cluster=args.cluster,
                                     slurm_max_num_timeout=args.max_requeues)
    gpus = args.ngpus if args.gpus is None else args.gpus
    params = dict(nodes=args.nodes, tasks_per_node=args.ngpus, cpus_per_task=args.cpus_per_task,
                  timeout_min=args.timeout, name=args.job_name or Path(args.engine).stem)
    if gpus:
        params["gpus_per_node"] = gpus
    if args.mem_per_gpu_gb:
        params["mem_gb"] = args.mem_per_gpu_gb * args.ngpus
    slurm = {"signal_delay_s": args.signal_delay_s}
    for key in ("partition", "constraint", "comment", "account"):
        if getattr(args, key):
            slurm[key] = getattr(args, key)
    params.update({f"slurm_{k}": v for k, v in slurm.items()})
    executor.update_parameters(**{k: v for k, v in params.items()
                                  if executor.cluster == "slurm" or not k.startswith("slurm_")})
    job = executor.submit(Trainer(args.engine, engine_args, args.rendezvous, args.shared_dir))
    print(f"submitted job {job.job_id}; logs in {Path(str(args.job_dir).replace('%j', str(job.job_id))).resolve()}",
          flush=True)
    if args.wait:
        print("\n".join(map(str, job.results())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
