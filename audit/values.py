"""Value types and number parsing at the bottom of the layers: no attack, model or engine imports here."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

from .errors import ConfigError
from .registry import ATTACKS

NORMS = ("linf", "l2")


def parse_number(text: str | float | int, what: str) -> float:
    """Parse ``0.03``, ``8/255`` or ``1e-2`` into a float, with a clear error otherwise."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(Fraction(float(num.strip())).limit_denominator(10**9) / Fraction(float(den.strip())))
        return float(s)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise ConfigError(f"{what} must be a number such as 0.03 or 8/255, got {text!r}") from None


def parse_number_list(text: str | Sequence[float] | float, what: str) -> list[float]:
    """Parse ``"0.1,0.5,2"`` (or a single value) into floats."""
    if isinstance(text, (int, float)):
        return [float(text)]
    if not isinstance(text, str):
        return [parse_number(v, what) for v in text]
    vals = [parse_number(v, what) for v in text.split(",") if v.strip()]
    if not vals:
        raise ConfigError(f"{what} is empty; give one number or a comma-separated list")
    return vals


@dataclass
class AttackSpec:
    """One attack in the cascade. ``name`` is the key used in results.

    Only what every attack shares lives here; the attack's own parameters are ``params``,
    an instance of the attack class's ``Params`` dataclass (None = its defaults).
    """

    kind: str
    name: str
    norm: str
    eps: float
    params: Any = None

    def to_dict(self) -> dict[str, Any]:
        """kind, name, display_name and the attack's parameters, flat (what results.json records)."""
        cls = ATTACKS.get(self.kind)
        params = self.params if self.params is not None else cls.Params()
        return {"kind": self.kind, "name": self.name, "display_name": cls.display_name,
                "gradient_free": bool(cls.gradient_free), **params.to_dict()}




def eps_text(eps: float) -> str:
    """The text form of a radius, derived from its value: a short decimal (``0.1``), else ``k/255``, else ``%g``.

    There is one source of truth for a budget (its value); every page and suggested command reads this.
    """
    v = float(eps)
    short = f"{v:.3g}"
    if abs(float(short) - v) <= 1e-12 * max(1.0, abs(v)):
        return short
    n = v * 255
    if n > 0 and abs(n - round(n)) <= 1e-9 * max(1.0, n):
        return f"{round(n)}/255"
    return f"{v:.6g}"


def parse_eps_list(text: str) -> list[tuple[float, str]]:
    """``"1/255,2/255"`` -> [(value, text), ...] ascending; refuses duplicates and values outside (0, 1]."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not parts:
        raise ConfigError("--eps is empty; give one radius such as 8/255 or an ascending list 1/255,2/255,4/255")
    vals = [(parse_number(t, "--eps"), t) for t in parts]
    for v, t in vals:
        if not 0 < v <= 1:
            raise ConfigError(f"--eps must be in (0, 1] (pixels are in [0, 1]), got {t}; try 8/255")
    if len({round(v, 12) for v, _ in vals}) != len(vals):
        raise ConfigError(f"--eps {text} lists the same radius twice; give each budget once")
    return sorted((v, eps_text(v)) for v, _ in vals)
