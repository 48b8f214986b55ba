"""Repair zoo, second look: the standard (AutoAttack-level) suite on a finished repair's input and output.

Issue 27's goals judge the zoo with the quick suite and ask for the standard suite on the repairs
that improved. For each repair folder given (``bench/repair_zoo.py`` writes them as
``<out>/<model>-<method>``) this audits the input model and the repaired model with
``cli.py audit --suite standard`` on the same ``--n-per-class`` subset the repair's audits drew,
then compares them with McNemar's exact test on the points the repair's after-audit reported
(the selection images, which chose the checkpoint, are left out as in the repair's own outcome).
Writes ``<repair>/standard.json`` and prints one markdown row per repair.

    .venv/bin/python bench/zoo_standard.py bench/zoo/keras-nhwc-dense-default [...] [--threads 1]

The two audits are skipped when their results.json exists (``--resume`` behaviour by default).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reat_finetune.significance import PointOutcomes, p_words, paired_tests, read_points  # noqa: E402

log = logging.getLogger("bench.zoo_standard")


def _model_args(repair: dict, cfg: dict, repaired: bool) -> list[str]:
    """The model part of an audit command line: the input as the repair read it, or the repaired file."""
    ckpt = cfg.get("checkpoint")
    if not repaired:
        return [cfg["model"], *(["--checkpoint", ckpt] if ckpt else [])]
    out = Path(repair["model"]["repaired"])
    out = out if out.is_absolute() else ROOT / out
    return [cfg["model"], "--checkpoint", str(out)] if ckpt else [str(out)]


def audit_cmd(folder: Path, repaired: bool, threads: int) -> list[str]:
    """``cli.py audit --suite standard`` with the before-audit's data and model options."""
    repair = json.loads((folder / "repair.json").read_text())
    cfg = json.loads((folder / "before" / "results.json").read_text())["config"]
    cmd = [sys.executable, str(ROOT / "cli.py"), "audit", *_model_args(repair, cfg, repaired),
           "--dataset", cfg["dataset"], "--suite", "standard", "--threads", str(threads),
           "--out", str(folder / ("standard-after" if repaired else "standard-before")),
           "--no-html", "--no-pdf", "--quiet", "--no-download", "--seed", str(cfg["seed"]),
           "--subset-seed", str(cfg["subset_seed"])]
    for key, flag in (("data_root", "--data-root"), ("n_per_class", "--n-per-class")):
        if cfg.get(key) is not None:
            cmd += [flag, str(cfg[key])]
    for key, flag in (("mean", "--mean"), ("std", "--std")):
        if cfg.get(key) is not None:
            value = cfg[key]
            cmd += [flag, value if isinstance(value, str) else ",".join(str(v) for v in value)]
    return cmd


def _only(p: PointOutcomes, index: np.ndarray) -> PointOutcomes:
    """``p`` restricted to the evaluation points in ``index``."""
    keep = np.isin(p.index, index)
    return replace(p, index=p.index[keep], label=p.label[keep], clean=p.clean[keep], robust=p.robust[keep])


def compare(folder: Path, threads: int) -> dict[str, Any]:
    """Runs the two standard audits (unless present) and the paired tests on the after-audit's points."""
    rec: dict[str, Any] = {}
    for repaired in (False, True):
        cmd = audit_cmd(folder, repaired, threads)
        out = Path(cmd[cmd.index("--out") + 1])
        if not (out / "results.json").exists():
            log.info("%s", " ".join(cmd))
            t0 = time.time()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            if proc.returncode != 0:
                raise SystemExit(f"{folder}: audit failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}")
            rec["after_s" if repaired else "before_s"] = round(time.time() - t0, 1)
    quick_after = read_points(folder / "after")
    before, after = read_points(folder / "standard-before"), read_points(folder / "standard-after")
    if quick_after is None or before is None or after is None:
        raise SystemExit(f"{folder}: a points.json is missing")
    groups = json.loads((folder / "before" / "results.json").read_text())["dataset"]["groups"] or {}
    rec["tests"] = paired_tests(_only(before, quick_after.index), _only(after, quick_after.index),
                                groups.get("tail", []))
    (folder / "standard.json").write_text(json.dumps(rec, indent=1))
    return rec


def _fig(t: dict | None, key: str) -> str:
    if not t:
        return "-"
    return f"{100 * t[key] / t['n']:.1f}"


def row(folder: Path, rec: dict[str, Any]) -> str:
    """One markdown row: standard-suite worst case and tail worst case, before → after, with McNemar's p."""
    t = rec["tests"]
    wc, tail = t["worst_case"], t["tail"]
    tail_text = f"{_fig(tail, 'before')} → {_fig(tail, 'after')} ({p_words(tail['p_value'])})" if tail else "-"
    return (f"| {folder.name} | {t['n_points']} | {_fig(wc, 'before')} → {_fig(wc, 'after')} "
            f"(+{wc['gained']} / −{wc['lost']}, {p_words(wc['p_value'])}) | {tail_text} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repairs", nargs="+", type=Path, help="repair output folders (with repair.json)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    rows = ["| repair | points | worst case, standard suite (gained / lost) | tail worst case |", "|---|---|---|---|"]
    for folder in args.repairs:
        rows.append(row(folder, compare(folder, args.threads)))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
