"""REAT adversarial fine-tuning (and the PGD-AT / AT-BSL comparators) with a before/after audit.

    from reat_finetune import RepairConfig, run_repair
    run = run_repair(RepairConfig(audit=AuditConfig(model="examples/digits_cnn.onnx", eps=0.1)))
"""
from __future__ import annotations

from .config import RepairConfig
from .errors import RepairError, RepairInterrupted
from .repair import RepairRun, format_comparison, run_repair
from .train import TrainHooks

__all__ = ["RepairConfig", "RepairError", "RepairInterrupted", "RepairRun", "TrainHooks", "format_comparison",
           "run_repair"]
