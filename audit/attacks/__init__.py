"""Attacks, registered by name: ``create_attack(spec)`` builds one from an AttackSpec."""
from __future__ import annotations

from ..config import AttackSpec
from ..registry import ATTACKS
from .base import Attack, AttackOutcome
from .noise import BatchNoise, Noise, PointNoise, point_seed
from . import pgd as _pgd  # noqa: F401  (registers "pgd")
from . import temp_pgd as _temp_pgd  # noqa: F401  (registers "temp-pgd")


def create_attack(spec: AttackSpec) -> Attack:
    """Build the attack named by ``spec.kind`` (helpful error for unknown names)."""
    return ATTACKS.get(spec.kind)(spec)


__all__ = ["Attack", "AttackOutcome", "create_attack", "ATTACKS", "Noise", "PointNoise", "BatchNoise", "point_seed"]
