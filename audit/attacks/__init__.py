"""Attacks, registered by name: ``create_attack(spec)`` builds one from an AttackSpec.

Each attack lives in its own module and declares its parameters (``Params``), its display
name and whether it needs gradients; see :mod:`.base` for the contract and :mod:`.suites`
for the named suites (quick, standard, thorough).
"""
from __future__ import annotations

from typing import Any, Optional

from ..values import AttackSpec
from ..registry import ATTACKS
from .base import Attack, AttackOutcome, AttackParams, ascent_direction, project, view_rows
from .noise import BatchNoise, Noise, PointNoise, point_seed
from .pgd import PGD  # registers "pgd"; the repair's training attacks build on it
from . import temp_pgd as _temp_pgd  # noqa: F401  (registers "temp-pgd")
from . import apgd as _apgd  # noqa: F401  (registers "apgd-ce", "apgd-dlr")
from . import apgd_t as _apgd_t  # noqa: F401  (registers "apgd-t")
from . import square as _square  # noqa: F401  (registers "square")
from .suites import SUITES, Suite


def create_attack(spec: AttackSpec) -> Attack:
    """Build the attack named by ``spec.kind`` (helpful error for unknown names)."""
    return ATTACKS.get(spec.kind)(spec)


def make_spec(kind: str, norm: str, eps: float, *, name: Optional[str] = None, **params: Any) -> AttackSpec:
    """An AttackSpec with ``kind``'s own parameter dataclass, e.g. ``make_spec("pgd", "linf", 8/255, steps=10)``."""
    cls = ATTACKS.get(kind)
    return AttackSpec(kind, name or kind, norm, float(eps), cls.Params(**params))


def display_name(kind: str) -> str:
    """The registry's display name of an attack kind ('APGD-CE'); the kind itself when unknown."""
    return ATTACKS.get(kind).display_name if kind in ATTACKS else kind


__all__ = ["Attack", "AttackOutcome", "AttackParams", "create_attack", "make_spec", "display_name", "ATTACKS",
           "SUITES", "Suite", "Noise", "PointNoise", "BatchNoise", "point_seed", "PGD", "ascent_direction", "project",
           "view_rows"]
