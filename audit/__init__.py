"""tailaudit's audit engine: class-wise adversarial robustness of image classifiers on long-tailed data.

The public API (with report rendering) is the ``tailaudit`` package: ``tailaudit.run_audit``.
"""
from __future__ import annotations

from .config import AttackSpec, AuditConfig  # noqa: E402
from .errors import TailAuditError  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["AuditConfig", "AttackSpec", "TailAuditError", "__version__"]
