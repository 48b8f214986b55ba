"""tailaudit's audit engine: class-wise adversarial robustness of image classifiers on long-tailed data.

The public API (with report rendering) is the ``tailaudit`` package: ``tailaudit.run_audit``.
``AuditConfig``, ``AttackSpec``, ``TailAuditError`` and ``__version__`` are read from here lazily (PEP 562),
so importing the torch-free results contract (``audit.contract``) does not load torch.
"""
from __future__ import annotations

import os
from typing import Any

# onnxruntime writes a device id and an event database (OS, interpreter path) under HOME/.cache/Microsoft at
# its first session, queued for upload; disable_telemetry_events() does not stop it, this variable does, when
# set before onnxruntime is imported (an auditor of confidential models sends nothing anywhere).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__all__ = ["AuditConfig", "AttackSpec", "TailAuditError", "__version__"]


def __getattr__(name: str) -> Any:
    """The public names, imported on first use (the imports are spelled out so tests/test_layers.py sees them)."""
    if name == "AuditConfig":
        from .config import AuditConfig as value
    elif name == "AttackSpec":
        from .values import AttackSpec as value
    elif name == "TailAuditError":
        from .errors import TailAuditError as value
    elif name == "__version__":
        from .version import __version__ as value
    else:
        raise AttributeError(f"module 'audit' has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
