"""The CI gate: ``--fail-under KEY=VALUE[,...]`` turns figures into an exit code (3 = failed).

Values are fractions in [0, 1) (``robust=0.5``) or percent with a sign (``robust=50%``); a bare
number of 1 or more is refused as ambiguous. Every key is a floor except ``max-gap`` (the
head/tail gap of worst-case robust accuracy), which is a ceiling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..errors import ConfigError
from ..contract.model import AuditResults, Gate, GateCondition, Summary

EXIT_GATE = 3

# key -> (description, how to read it from the results' summary, needs groups, is a ceiling)
METRICS: dict[str, tuple[str, Callable[[Summary], Optional[float]], tuple[str, ...], bool]] = {
    "clean": ("clean accuracy", lambda s: s.clean.overall, (), False),
    "robust": ("worst-case robust accuracy", lambda s: s.worst_case.overall, (), False),
    "balanced": ("balanced (class-mean) robust accuracy", lambda s: s.worst_case.mean, (), False),
    "worst-class": ("robust accuracy of the weakest class", lambda s: s.worst_case.worst, (), False),
    "tail": ("robust accuracy of the tail classes", lambda s: s.worst_case.group("tail"), ("tail",), False),
    "max-gap": ("head/tail gap of robust accuracy", lambda s: s.robust_gap,
                ("head", "tail"), True),
}
_HINT = "write KEY=VALUE[,KEY=VALUE] with KEY in " + ", ".join(METRICS) + " and VALUE a fraction (0.5) or percent (50%)"


@dataclass(frozen=True)
class Condition:
    key: str
    threshold: float  # a fraction
    text: str  # as the user wrote it

    def passes(self, value: Optional[float]) -> bool:
        if value is None:
            return False
        return value <= self.threshold + 1e-12 if METRICS[self.key][3] else value >= self.threshold - 1e-12


def _value(text: str, key: str) -> float:
    t = text.strip()
    pct = t.endswith("%")
    try:
        v = float(t[:-1] if pct else t)
    except ValueError:
        raise ConfigError(f"--fail-under {key}={text}: not a number; {_HINT}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ConfigError(f"--fail-under {key}={text}: not a finite number; {_HINT}")
    if pct:
        v /= 100
    elif v >= 1:
        raise ConfigError(f"--fail-under {key}={text} is ambiguous: write a fraction below 1 ({key}={v / 100:g}) "
                          f"or percent with the sign ({key}={text}%)")
    if not 0 <= v <= 1:
        raise ConfigError(f"--fail-under {key}={text}: must be between 0 and 100%")
    return v


def parse_fail_under(text: str) -> list[Condition]:
    """Parse ``"robust=0.4,tail=25%"``; one clear :class:`ConfigError` on anything else."""
    out: list[Condition] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        key, sep, val = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in METRICS:
            raise ConfigError(f"--fail-under: {part!r} is not a condition; {_HINT}")
        if any(c.key == key for c in out):
            raise ConfigError(f"--fail-under names {key} twice; give each key once")
        out.append(Condition(key, _value(val, key), val.strip()))
    if not out:
        raise ConfigError(f"--fail-under is empty; {_HINT}")
    return out


def check_attack_free(conditions: Sequence[Condition]) -> None:
    """--attacks none: only the clean-accuracy condition can be measured; refuse the others before any work."""
    robust = [c.key for c in conditions if c.key != "clean"]
    if robust:
        raise ConfigError(f"--fail-under {','.join(robust)}: --attacks none measures no robust accuracy; gate on "
                          "clean only, or run attacks")


def check_available(conditions: Sequence[Condition], groups: Sequence[Optional[str]]) -> None:
    """Refuse (before any compute) a condition on a group the dataset does not have, e.g. tail when balanced."""
    present = {g for g in groups if g}
    for c in conditions:
        needed = [g for g in METRICS[c.key][2] if g not in present]
        if needed:
            why = "the training set is balanced, so it has no head/medium/tail groups" if not present else \
                f"no class falls into the {' or '.join(needed)} group"
            raise ConfigError(f"--fail-under {c.key}: {why}; drop that condition (use worst-class or balanced)")


def evaluate_gate(conditions: Sequence[Condition], results: AuditResults) -> Gate:
    """``results.gate``: each condition with its threshold, measured value and outcome."""
    rows = []
    for c in conditions:
        value = METRICS[c.key][1](results.summary)
        rows.append(GateCondition(key=c.key, threshold=c.threshold, value=value, passed=c.passes(value),
                                  direction="at most" if METRICS[c.key][3] else "at least"))
    return Gate(conditions=rows, passed=all(r.passed for r in rows))


def gate_failures(gate: Gate) -> list[str]:
    """One line per failing condition, for stderr."""
    lines = []
    for r in gate.conditions:
        if r.passed:
            continue
        v = "n/a" if r.value is None else f"{100 * r.value:.1f}%"
        lines.append(f"tailaudit: gate failed: {r.key} = {v}, required {r.direction} {100 * r.threshold:.1f}% "
                     f"({METRICS[r.key][0]})")
    return lines
