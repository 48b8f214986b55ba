"""Peak memory of a full CIFAR-10 test-set audit (10 000 images), via the real CLI in a child process.

Saves the bench's standard-trained timm model as a safetensors checkpoint, runs
``cli.py audit timm:ARCH --checkpoint ... --dataset cifar10lt --data-root .cache/cifar10`` and
reports the child's peak resident memory (ru_maxrss) and wall time. Usage:
python bench/memory_full_cifar.py [--steps 20]
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

from _common import CACHE, ROOT, cifar10_root, standard_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet10t")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    standard_model(args.arch)  # makes sure the cached checkpoint exists
    ckpt = CACHE / f"bench-{args.arch}-e2.safetensors"
    out = CACHE / "bench-memory-run"
    cmd = [sys.executable, str(ROOT / "cli.py"), "audit", f"timm:{args.arch}", "--checkpoint", str(ckpt),
           "--dataset", "cifar10lt", "--data-root", str(cifar10_root()), "--no-download",
           "--mean", "0.4914,0.4822,0.4465", "--std", "0.2471,0.2435,0.2616", "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--out", str(out), "--quiet", "--no-pdf", "--no-html"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    tail = [ln for ln in proc.stdout.splitlines() if ln.startswith("clean accuracy")]
    print(f"full CIFAR-10 test set (10000 images), timm:{args.arch}, PGD-{args.steps} + Temperature-PGD cascade, CPU")
    print(tail[0] if tail else "")
    print(f"peak resident memory {peak_mb:.0f} MB, wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
