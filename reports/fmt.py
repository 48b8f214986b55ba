"""Number formatting shared by the verdict sentences, the templates and the tests."""
from __future__ import annotations

import math
from typing import Any, Sequence

from markupsafe import Markup, escape

from audit.contract.model import AttackEntry, ThreatModel

NORMS = {"linf": "L∞", "l2": "L2", "l1": "L1"}
NOWRAP_MAX = 40  # longer hyphenated words (paths) may still wrap: they would overflow the box
ATTACK_NAMES = {"pgd": "PGD", "temp-pgd": "Temperature-PGD", "apgd": "APGD", "fgsm": "FGSM"}


def pct(value: float | None, digits: int = 1) -> str:
    """0.384 -> '38.4%'; None -> 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value * 100:.{digits}f}%"


def num(value: float | None, digits: int = 1) -> str:
    """0.384 -> '38.4' (a percentage without the sign, for tables)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 100:.{digits}f}"


def points(delta: float | None, digits: int = 1, signed: bool = True) -> str:
    """A difference of two fractions in percentage points: 0.073 -> '+7.3'."""
    if delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return "n/a"
    value = round(delta * 100, digits)
    if value == 0:
        value = 0.0  # no "-0.0"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def interval(ci: Sequence[float] | None) -> str:
    """[0.48, 0.74] -> '48.0–74.0'."""
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return ""
    return f"{ci[0] * 100:.1f}–{ci[1] * 100:.1f}"


def eps_text(threat: ThreatModel) -> str:
    """'8/255' as recorded, else the nearest k/255 fraction, else the number."""
    if threat.eps_text:
        return str(threat.eps_text)
    eps = float(threat.eps)
    return over_255(eps) or f"{eps:g}"


def over_255(value: float | None) -> str | None:
    """2/255 for 0.00784, None when the value is not close to k/255."""
    if value is None:
        return None
    k = value * 255
    if k > 0 and abs(k - round(k)) < 1e-3:
        return f"{round(k)}/255"
    return None


def threat_text(threat: ThreatModel) -> str:
    """'L∞, ε = 8/255'."""
    return f"{NORMS.get(str(threat.norm).lower(), str(threat.norm))}, ε = {eps_text(threat)}"


def attack_label(attack: AttackEntry) -> str:
    """Display name of an attack: 'PGD-20', 'Temperature-PGD-20 (T = 0.5)', 'Square-5000 (probe 1000)'."""
    base = short_name(attack)
    steps, queries = attack.param("steps"), attack.param("queries")
    if steps:
        base += f"-{steps}"
    elif queries:
        base += f"-{queries}"
    if (attack.param("restarts") or 1) > 1:
        base += f" ×{attack.param('restarts')}"
    if attack.param("temperature") is not None:
        base += f" (T = {attack.param('temperature'):g})"
    probe = attack.param("probe")
    if isinstance(probe, int) and isinstance(queries, int) and 0 < probe < queries:
        base += f" (probe {probe})"
    return base


def short_name(attack: AttackEntry) -> str:
    """Short display name of an attack (no step count): the registry's name recorded in results."""
    return str(attack.display_name or ATTACK_NAMES.get(str(attack.kind), str(attack.name)))


def seconds(value: float | None) -> str:
    """4.5 -> '4.5 s', 312 -> '5 min 12 s'."""
    if value is None:
        return "n/a"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def count(value: int | None) -> str:
    """12406 -> '12,406'."""
    return "n/a" if value is None else f"{int(value):,}"


def keep_words(text: Any) -> Markup:
    """``text`` escaped, every word with a hyphen kept on one line: a shell command wrapped at ``--`` breaks
    when copied from a PDF. Line breaks stay possible at spaces (and inside words too long for a line)."""
    words = str(text).split(" ")
    return Markup(" ").join(Markup('<span class="nw">{}</span>').format(w) if "-" in w and len(w) <= NOWRAP_MAX
                           else escape(w) for w in words)
