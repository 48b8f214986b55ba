"""tailaudit's application layer: the one place that runs audits and repairs *and* renders reports.

    import tailaudit
    run = tailaudit.run_audit(tailaudit.AuditConfig(model=my_module, dataset=my_dataset,
                                                    mean=(0.5,), std=(0.5,), eps=2 / 255),
                              formats=("html",))
    print(run.results.worst_case.overall, run.out_dir)

Layers (docs/architecture.md, kept by tests/test_layers.py): value types and the results contract at the bottom
(``audit.values``, ``audit.errors``, ``audit.bounds``, ``audit.contract``); attacks, models and data
on them; the audit engine (``audit.run.engine``, ``audit.pipeline``); the repair engine
(``reat_finetune``); ``reports`` reading results files only; and this package on top. ``cli.py``
is a thin shell over it.
"""
from __future__ import annotations

from audit.config import AttackSpec, AuditConfig
from audit.errors import TailAuditError
from audit.models import LoadedModel
from audit.contract.model import AuditResults
from audit.version import __version__
from reat_finetune.config import RepairConfig

from .api import AuditRun, RepairRun, render, run_audit, run_repair

__all__ = ["AttackSpec", "AuditConfig", "AuditResults", "AuditRun", "LoadedModel", "RepairConfig", "RepairRun",
           "TailAuditError", "__version__", "render", "run_audit", "run_repair"]
