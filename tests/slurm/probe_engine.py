"""A minimal engine for the Slurm tests: the launcher/requeue mechanics, independent of the real engines.

Same contract as main_*.py: ``--output-dir``; auto-resume from ``<output-dir>/checkpoint.pt``; one all-reduce per
"epoch" over the process group that lavila.utils.distributed builds from Slurm/torchrun variables; rank 0 writes
``checkpoint.pt`` after every epoch and ``metrics.json`` at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from lavila.config import parse_args
from lavila.utils import distributed as du
from lavila.utils.checkpoint import load_checkpoint, save_checkpoint


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--output-dir", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--epoch-seconds", type=float, default=0.5)
    args = parse_args(p)  # --config FILE.yaml like the real engines
    info = du.init_distributed("cpu")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start, resumed = 0, None
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.is_file():
        start = resumed = int(load_checkpoint(ckpt_path)["epoch"])
        du.print_main(f"=> resumed from {ckpt_path} at epoch {start}", flush=True)
    for epoch in range(start, args.epochs):
        total = du.all_reduce_sum(torch.tensor(float(info.rank + 1)))
        time.sleep(args.epoch_seconds)
        if du.is_main_process():
            save_checkpoint({"epoch": epoch + 1, "state_dict": {}, "args": vars(args)}, ckpt_path)
            print(f"epoch {epoch + 1}/{args.epochs} rank-sum {float(total):g} world {info.world_size}", flush=True)
        du.barrier()
    if du.is_main_process():
        (out / "metrics.json").write_text(json.dumps({
            "world_size": info.world_size, "resumed_from": resumed, "epochs": args.epochs,
            "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)}))
    du.cleanup_distributed()


if __name__ == "__main__":
    main()
