"""How torch's thread count changes fine-tuning speed on an idle and on a busy machine.

Runs the demo repair's fine-tuning (digits CNN, REAT, ``--train-steps-total`` steps) in a fresh
process per setting with ``--threads 1``, ``2``, ... and with no ``--threads`` (tailaudit's
default rule: half the usable cores), first on an idle machine, then with ``--load N``
busy-looping processes competing for the cores (what a shared CI runner or a notebook server
looks like). Prints fine-tuning seconds (from repair.json) per setting; rounds alternate.

    .venv/bin/python bench/threads.py [--threads 1,2] [--load 2] [--steps 120] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPIN = "while True: pass"


def fine_tune_seconds(threads: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "cli.py"), "repair", str(ROOT / "examples" / "digits_cnn.onnx"),
               "--dataset", "digitslt", "--train-steps-total", str(steps), "--evaluations", "1",
               "--n-per-class", "5", "--attacks", "pgd", "--steps", "3", "--no-html", "--no-pdf", "--quiet",
               "--out", str(Path(tmp) / "r")]
        if threads != "default":
            cmd += ["--threads", threads]
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        return float(json.loads((Path(tmp) / "r" / "repair.json").read_text())["timings"]["fine_tune_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="explicit thread counts to compare with the default rule")
    ap.add_argument("--load", type=int, default=2, help="busy-looping processes for the 'busy' rows")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    settings = [t.strip() for t in args.threads.split(",")] + ["default"]
    for label, load in (("idle", 0), (f"busy ({args.load} spinning processes)", args.load)):
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(load)]
        try:
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                for t in settings:
                    s = fine_tune_seconds(t, args.steps)
                    best[t] = min(best.get(t, s), s)
        finally:
            for p in spinners:
                p.kill()
        for t in settings:
            print(f"{label:<32} threads {t:<8} fine-tuning {best[t]:6.1f} s (best of {args.rounds}, "
                  f"{args.steps} steps)")


if __name__ == "__main__":
    main()
