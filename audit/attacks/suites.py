"""Named attack suites: one registry is the single source for ``--suite`` choices and contents.

* ``quick`` (default): PGD-20 -> Temperature-PGD-20 (T = 0.5), the product's fast audit.
* ``standard``: APGD-CE -> APGD-T -> Temperature-PGD -> Square-5000, AutoAttack's attacks
  (without FAB-T) plus Temperature-PGD, so figures compare with AutoAttack / RobustBench;
  APGD-T attacks the 3 targets MALT ranks nearest (docs/attacks.md, "Target ranking"), Square
  probes 500 queries and goes on to 5000 where it beats the gradient attacks ("Square's probe"),
  and where no gradient attack had a non-zero gradient it reruns up to twice from fresh starts on the
  points its first run left robust ("Square's reruns where the gradients are blind").
  These choices were measured against published AutoAttack (docs/benchmarks.md, "Attack suites vs
  AutoAttack"; docs/attacks.md).
* ``thorough``: APGD-CE and APGD-T with more restarts, a Temperature-PGD sweep
  (T = 0.1, 0.5, 2, 5) and Square with 20000 queries.

An explicit ``--attacks`` list makes the suite ``custom``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..registry import Registry

SUITES = Registry("suite")


@dataclass(frozen=True)
class Suite:
    """An ordered cascade: (attack kind, parameter overrides) pairs, plus a note for the report."""

    name: str
    description: str
    attacks: tuple[tuple[str, dict[str, Any]], ...]
    temperatures: tuple[float, ...] = (0.5,)
    note: Optional[str] = None
    comparable_with_autoattack: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        return [k for k, _ in self.attacks]


def register_suite(suite: Suite) -> Suite:
    SUITES.register(suite.name)(suite)
    return suite


register_suite(Suite(
    "quick", "PGD-20 then Temperature-PGD-20 (T = 0.5): fast, the default",
    (("pgd", {}), ("temp-pgd", {})),
    note="quick suite (PGD + Temperature-PGD): a fast audit, not AutoAttack-level; confirm the figures with "
         "--suite standard"))
register_suite(Suite(
    "standard", "APGD-CE-100 -> APGD-T (the 3 nearest targets by MALT's ranking x 100) -> Temperature-PGD-20 -> "
                "Square-5000 (full budget where it beats the gradient attacks after 500; up to 2 independent "
                "reruns where every input gradient was zero): AutoAttack-level",
    (("apgd-ce", {}), ("apgd-t", {"ranking": "malt", "targets": 3}), ("temp-pgd", {}),
     ("square", {"probe": 500, "reruns": 2})),
    comparable_with_autoattack=True))
register_suite(Suite(
    "thorough", "APGD-CE (5 restarts) -> APGD-T (3 restarts) -> Temperature-PGD sweep T = 0.1, 0.5, 2, 5 -> "
                "Square-20000",
    (("apgd-ce", {"restarts": 5}), ("apgd-t", {"restarts": 3}), ("temp-pgd", {}), ("square", {"queries": 20000})),
    temperatures=(0.1, 0.5, 2.0, 5.0), comparable_with_autoattack=True))
