"""Generation speed of the corruption audit: images per second per corruption on 32×32 CIFAR-10 test images.

Each corruption × severity corrupts the same ``--images`` real CIFAR-10 test images through
tailaudit's seeded generator (audit/corruptions/generate.py, the path the audit's DataLoader workers
run), in one process with ``--threads`` threads for OpenCV, torch and the BLAS; ``--workers N``
also times the DataLoader path with N worker processes. Prints images/s per corruption (all
severities pooled), the slowest severity, and the estimated generation time of the whole
``--corruptions common`` audit on CIFAR-10 (10 000 images × 15 corruptions × 5 severities); the
model's forward passes come on top (75 passes over the test set).

    .venv/bin/python bench/corruption_speed.py [--images 100] [--threads 1] [--workers 0] [--json out.json]

``--audit K`` instead runs the real pipeline (``tailaudit.run_audit`` with ``corruptions="common"``, all
five severities) on K CIFAR-10 test images per class with a linear classifier (its forward pass costs
next to nothing, so the figure is the pipeline's generation throughput) and ``--workers`` loader processes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100, help="CIFAR-10 test images per corruption and severity")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="also time the DataLoader path with this many workers")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--audit", type=int, default=0, metavar="K", help="time the whole pipeline on K images a class")
    args = ap.parse_args()
    _set_threads(args.threads)  # before numpy, torch and cv2 are imported
    if args.audit:
        return _audit(args.audit, args.threads, args.workers)
    import cv2
    import torch

    from audit.corruptions import ALL, COMMON, SEVERITIES
    from audit.corruptions.generate import corrupt_tensor
    from bench._common import load_tensors

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    x, _ = load_tensors("test", limit_per_class=max(1, -(-args.images // 10)))
    x = x[: args.images]
    corrupt_tensor(x[0], "glass_blur", 1, seed=0, index=0)  # numba compiles glass blur once per process
    rows = {}
    for name in ALL:
        per_sev = {}
        for sev in SEVERITIES:
            t0 = time.perf_counter()
            for i in range(len(x)):
                corrupt_tensor(x[i], name, sev, seed=0, index=i)
            per_sev[sev] = len(x) / (time.perf_counter() - t0)
        pooled = len(SEVERITIES) / sum(1 / r for r in per_sev.values())
        rows[name] = {"images_per_s": pooled, "per_severity": per_sev}
        print(f"{name:18s} {pooled:8.0f} img/s   slowest severity {min(per_sev, key=per_sev.get)}: "
              f"{min(per_sev.values()):8.0f} img/s", flush=True)
    common_s = sum(10000 / rows[n]["per_severity"][s] for n in COMMON for s in SEVERITIES)
    all_s = common_s + sum(10000 / rows[n]["per_severity"][s] for n in ALL if n not in COMMON for s in SEVERITIES)
    print(f"estimated generation time on one process, CIFAR-10 (10000 images x 5 severities): common (15) "
          f"{common_s / 60:.1f} min, all (19) {all_s / 60:.1f} min")
    out = {"threads": args.threads, "images": len(x), "per_corruption": rows, "common_s": common_s, "all_s": all_s,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.workers:
        out["loader"] = _loader(x, args.workers)
        print(f"DataLoader with {args.workers} workers (gaussian_noise, zoom_blur, severity 3): "
              f"{out['loader']:.0f} img/s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def _loader(x, workers: int) -> float:
    """Images/s through the audit's dataset class and a DataLoader with ``workers`` processes."""
    import numpy as np
    from torch.utils.data import DataLoader, TensorDataset

    from audit.corruptions.points import GeneratedPoints

    base = TensorDataset(x, torch_labels(len(x)))
    pts = GeneratedPoints(base, np.arange(len(x)), [("gaussian_noise", 3), ("zoom_blur", 3)], (3, 32, 32), seed=0)
    t0 = time.perf_counter()
    n = sum(len(b[0]) for b in DataLoader(pts, batch_size=64, num_workers=workers))
    return n / (time.perf_counter() - t0)


def _audit(per_class: int, threads: int, workers: int) -> None:
    """The pipeline end to end: images/s of the corruption phase as results.json records it."""
    import tempfile

    import torch

    import tailaudit
    from bench._common import cifar10_root

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        config = tailaudit.AuditConfig(model=net, dataset="cifar10lt", data_root=str(cifar10_root()), download=False,
                                       n_per_class=per_class, attacks=("pgd",), steps=1, calibration_steps=0,
                                       force=True, threads=threads, workers=workers, quiet=True, out=f"{tmp}/run")
        run = tailaudit.run_audit(config, corruptions="common")
    c = run.results.summary.corruptions
    rate = c.images / c.seconds
    print(f"pipeline, {c.images} images (common x 5 severities, {per_class * 10} test images), --threads {threads} "
          f"--workers {workers}: {c.seconds:.1f} s, {rate:.0f} img/s; CIFAR-10 common audit "
          f"(750000 images) at this rate: {750000 / rate / 60:.1f} min")


def torch_labels(n: int):
    import torch

    return torch.zeros(n, dtype=torch.long)


if __name__ == "__main__":
    main()
