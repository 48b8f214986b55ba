"""HTML and PDF audit reports, and before/after comparisons, rendered from results.json.

Public API (used by ``cli.py audit``, ``cli.py report`` and the repair command)::

    render_report(results, out_dir, formats=("html", "pdf"), compare=None, training_log=None, repair=None,
                  basename="report", grade=None)
    load_results(path)
    check_comparable(before, after)

Reports depend on the torch-free results contract (``audit.contract``) alone. A file written before verdicts
were stored is graded by ``grade`` (``audit.checks.verdict.grade_on_load``), which the application layer hands in
(``tailaudit.api.report_renderer``).
"""
from __future__ import annotations

from .load import check_comparable, load_results
from .render import render_report

__all__ = ["check_comparable", "load_results", "render_report"]
