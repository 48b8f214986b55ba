"""tailaudit's audit engine: class-wise adversarial robustness of image classifiers on long-tailed data.

The public API (with report rendering) is the ``tailaudit`` package: ``tailaudit.run_audit``.
"""
from __future__ import annotations

import os

# onnxruntime writes a device id and an event database (OS, interpreter path) under HOME/.cache/Microsoft at
# its first session, queued for upload; disable_telemetry_events() does not stop it, this variable does, when
# set before onnxruntime is imported (an auditor of confidential models sends nothing anywhere).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .config import AttackSpec, AuditConfig  # noqa: E402
from .errors import TailAuditError  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["AuditConfig", "AttackSpec", "TailAuditError", "__version__"]
