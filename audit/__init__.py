"""tailaudit: class-wise adversarial robustness audits of image classifiers on long-tailed data."""
from __future__ import annotations

__version__ = "0.1.0"

from .config import AttackSpec, AuditConfig  # noqa: E402
from .errors import TailAuditError  # noqa: E402


def run_audit(config: AuditConfig, **kwargs):  # noqa: D401
    """Run an audit (see :func:`audit.pipeline.run_audit`)."""
    from .pipeline import run_audit as _run

    return _run(config, **kwargs)


__all__ = ["AuditConfig", "AttackSpec", "TailAuditError", "run_audit", "__version__"]
