"""Scaling out on one machine: audit points/s and REAT fine-tuning images/s for 1 and N ranks.

One rank is a plain ``python cli.py``; N ranks are ``python -m torch.distributed.run
--nproc-per-node N cli.py`` (gloo on CPU, one thread per rank; NCCL on GPUs, one GPU per
rank). The model is the bench's CIFAR-10-LT ``test_resnet`` (bench/cifar10lt_repair.py,
cached under .cache/), the data the real CIFAR-10 JPEGs.

* audit: PGD-10 then Temperature-PGD on ``--n-per-class`` x 10 test images; points/s =
  points / (audit wall time without loading), from rank 0's results.json; the sharded run's
  points.json is checked identical to the one-rank run's.
* repair: one REAT epoch (training PGD ``--train-steps`` steps) on the 11 166 training images
  left after the validation hold-out; images/s from training_log.json (global batch images
  per second of training steps, validation excluded).

    .venv/bin/python bench/scaling.py [--ranks 1,2] [--n-per-class 30] [--device cpu] [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, cifar10_root

from audit.contract.schema import load_results

MEAN, STD = "0.4914,0.4822,0.4465", "0.2471,0.2435,0.2616"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ranks: int, args: list[str]) -> float:
    """Run ``cli.py args`` on ``ranks`` processes; returns the wall time (exits on failure)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    prefix = [sys.executable]
    if ranks > 1:
        prefix += ["-m", "torch.distributed.run", f"--nproc-per-node={ranks}", "--master-addr=127.0.0.1",
                   f"--master-port={_port()}"]
    t0 = time.perf_counter()
    proc = subprocess.run([*prefix, str(ROOT / "cli.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{ranks} rank(s) failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", default="1,2", help="comma-separated process counts to compare (default 1,2)")
    ap.add_argument("--n-per-class", type=int, default=30, help="audit points per class (default 30)")
    ap.add_argument("--eps", default="2/255", help="audit eps (default 2/255: many points survive PGD)")
    ap.add_argument("--train-steps", type=int, default=5, help="training PGD steps (default 5)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for one GPU per rank")
    ap.add_argument("--repeats", type=int, default=1, help="alternating rounds; the best figure is kept")
    ap.add_argument("--skip-repair", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from cifar10lt_repair import RHO, standard_lt_model

    import torch

    ckpt = standard_lt_model("test_resnet", 40, torch.device("cpu"))
    root = cifar10_root()
    common = ["timm:test_resnet", "--checkpoint", str(ckpt), "--dataset", "cifar10lt", "--imbalance", str(RHO),
              "--data-root", str(root), "--no-download", "--mean", MEAN, "--std", STD, "--device", args.device,
              "--no-html", "--no-pdf", "--quiet", "--eps", args.eps, "--seed", "0"]
    ranks = [int(r) for r in args.ranks.split(",")]
    audit: dict[int, float] = {}
    repair: dict[int, float] = {}
    points: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        for rnd in range(args.repeats):
            for r in ranks:
                out = Path(tmp) / f"audit-{r}-{rnd}"
                wall = launch(r, ["audit", *common, "--n-per-class", str(args.n_per_class), "--steps", "10",
                                  "--out", str(out)])
                res = load_results(out / "results.json")
                assert (res.environment or {})["world_size"] == r and res.timings is not None
                pps = res.dataset.n_eval / (res.timings.total_s - res.timings.load_s)
                audit[r] = max(audit.get(r, 0.0), pps)
                points[r] = (out / "points.json").read_text()
                print(f"audit, {r} rank(s): {pps:.1f} points/s ({wall:.1f} s wall with start-up)", flush=True)
                if args.skip_repair:
                    continue
                out = Path(tmp) / f"repair-{r}-{rnd}"
                wall = launch(r, ["repair", *common, "--n-per-class", "1", "--steps", "2", "--attacks", "pgd",
                                  "--epochs", "1", "--train-steps", str(args.train_steps), "--batch-size-train", "128",
                                  "--train-eps", "8/255", "--out", str(out)])
                ips = json.loads((out / "training_log.json").read_text())["epochs"][1]["images_per_s"]
                repair[r] = max(repair.get(r, 0.0), ips)
                print(f"repair, {r} rank(s): {ips:.1f} images/s ({wall:.1f} s wall for the whole repair)", flush=True)
    same = all(points[r] == points[ranks[0]] for r in ranks)
    base = ranks[0]
    hw = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU {platform.machine()}"
    load = os.getloadavg()[0]
    print(f"\n{hw}, one thread per rank, load average {load:.1f} at the end; audit: {args.n_per_class * 10} points, "
          f"PGD-10 + Temperature-PGD at {args.eps}; repair: one REAT epoch, training PGD {args.train_steps} steps, "
          f"global batch 128; best of {args.repeats}")
    print("| ranks | audit points/s | speed-up | REAT fine-tuning images/s | speed-up |")
    print("|---|---|---|---|---|")
    for r in ranks:
        rep = f"{repair[r]:.1f} | {repair[r] / repair[base]:.2f}x" if r in repair else "- | -"
        print(f"| {r} | {audit[r]:.1f} | {audit[r] / audit[base]:.2f}x | {rep} |")
    print(f"points.json identical across rank counts: {same}")


if __name__ == "__main__":
    main()
