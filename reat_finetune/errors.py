"""Errors of the repair command: user-facing (exit code 2) and the Ctrl-C interruption (exit code 130)."""
from __future__ import annotations

from audit.errors import TailAuditError


class RepairError(TailAuditError):
    """Repair cannot go on: bad settings, no training data, no features, a foreign --resume folder, disk full."""


class RepairInterrupted(KeyboardInterrupt):
    """Ctrl-C during fine-tuning; ``checkpoint`` is the file a ``--resume`` continues from (or None)."""

    def __init__(self, message: str, checkpoint: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return self.message
