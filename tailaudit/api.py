"""``run_audit``, ``run_repair`` and ``render``: the engines with the report renderer wired in."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

from audit.config import AuditConfig
from audit.errors import ConfigError
from audit.phases import AuditRun, grade_on_load, out_dir_guard
from audit.phases import run_audit as _audit
from reat_finetune.config import RepairConfig
from reat_finetune.repair import RepairRun
from reat_finetune.repair import run_repair as _repair
from reat_finetune.train import TrainHooks
import reports

from .wording import python_errors

__all__ = ["AuditRun", "RepairRun", "render", "report_renderer", "run_audit", "run_repair"]


def report_renderer(results: Any, out_dir: str | Path, **options: Any) -> dict[str, Path]:
    """``reports.render_report`` as every entry point calls it (the ``Renderer`` the engines are handed): a file
    from before stored verdicts is graded by the audit's rules (``audit.checks.verdict.grade_on_load``; the reports,
    torch-free, hold none)."""
    return reports.render_report(results, out_dir, grade=grade_on_load, **options)


def run_audit(config: AuditConfig, *, formats: Sequence[str] = (), progress: Optional[bool] = None,
              corruptions: Optional[str | Sequence[str]] = None,
              severities: Optional[str | int | Sequence[int]] = None) -> AuditRun:
    """Audit ``config.model`` (a file, ``timm:NAME`` or an ``nn.Module``) and render ``formats`` beside the results.

    ``corruptions`` ("common", "all" or names) and ``severities`` (1..5, a list or "all") add the corruption
    audit (docs/corruptions.md); they set ``config.corruptions`` / ``config.severities`` for this call."""
    with python_errors():
        if corruptions is not None or severities is not None:
            config = dataclasses.replace(config, corruptions=config.corruptions if corruptions is None else corruptions,
                                         severities=config.severities if severities is None else severities)
        return _audit(config, progress=progress, formats=tuple(formats), render=report_renderer)


def run_repair(config: RepairConfig, *, hooks: Optional[TrainHooks] = None,
               progress: Optional[bool] = None) -> RepairRun:
    """Audit, fine-tune, export, audit again and render ``config.formats`` as the before/after report."""
    with python_errors():
        return _repair(config, hooks=hooks, progress=progress, render=report_renderer)


def render(results: str | Path, *, out: Optional[str | Path] = None, formats: Sequence[str] = ("html", "pdf"),
           compare: Optional[str | Path | Sequence[str | Path]] = None) -> dict[str, Path]:
    """Re-render saved results (``tailaudit report``), or compare them with ``compare`` (a repair's after run,
    or other models' results): ``out`` defaults to the folder of the last file."""
    with python_errors():
        _check_compare(results, compare)
        last = (list(compare)[-1] if isinstance(compare, (list, tuple)) and compare else compare) or results
        folder = Path(out) if out else Path(last).parent
        with out_dir_guard(folder):
            return report_renderer(results, folder, formats=list(formats), compare=compare)


def _check_compare(results: str | Path, compare: Optional[str | Path | Sequence[str | Path]]) -> None:
    """ConfigError when a file is compared with itself: a before/after of one run reads +0.0 everywhere."""
    if compare is None:
        return
    files = [Path(results)] + [Path(c) for c in ([compare] if isinstance(compare, (str, Path)) else compare)]
    seen: list[Path] = []
    for f in files:
        same = next((s for s in seen if _same_file(s, f)), None)
        if same is not None:
            raise ConfigError(f"--compare names {f.name} twice (the same file as {same}); compare a run with "
                              "another run (a repair's after/results.json, or another model's results)")
        seen.append(f)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()
