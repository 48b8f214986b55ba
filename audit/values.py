"""Value types and number parsing at the bottom of the layers: no attack, model or engine imports here."""
from __future__ import annotations

import collections.abc
import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional, Sequence

import numpy as np

from .errors import ConfigError
from .registry import ATTACKS

NORMS = ("linf", "l2")
NO_ATTACKS = "none"  # --attacks none: a corruption-only audit (audit/config.py)


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


def _expected(hint: Any) -> Optional[str]:
    """What a value of type ``hint`` is, in words; None for a hint this check does not judge (Any)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        arms = [_expected(a) for a in args if a is not type(None)]
        if any(a is None for a in arms):
            return None
        return " or ".join(arms) + (" or None" if type(None) in args else "")  # type: ignore[arg-type]
    if origin in (list, tuple, collections.abc.Sequence):
        inner = _expected(args[0]) if args else None
        return f"a list of {inner.removeprefix('a ').removeprefix('an ')}s" if inner else "a list"
    return {int: "a whole number", float: "a number", str: "text", bool: "True or False",
            dict: "a dict"}.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin in (list, tuple, collections.abc.Sequence):
        inner = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_fits(v, inner) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    return isinstance(value, hint) if isinstance(hint, type) else True


# one example per argument whose refusal reads better with one (a fraction is a Python number too)
EXAMPLES = {"eps": "eps=8/255", "train_eps": "train_eps=8/255", "step_size": "step_size=2/255",
            "steps": "steps=20", "eps_curve": "eps_curve=(1/255, 2/255)", "attacks": 'attacks=["pgd", "square"]',
            "mean": "mean=(0.4914, 0.4822, 0.4465)", "std": "std=(0.2471, 0.2435, 0.2616)",
            "corruptions": 'corruptions="common"', "severities": "severities=(1, 3, 5)"}


def check_field_types(config: Any, error: type[Exception] = ConfigError) -> None:
    """``error`` naming the first field of the dataclass ``config`` whose value does not fit its type hint, as the
    Python argument (``steps=``), with the value's type only (never its text); what a notebook can get wrong."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        if _fits(value, hint):
            continue
        expected = _expected(hint) or "another type"
        example = f" (e.g. {EXAMPLES[f.name]})" if f.name in EXAMPLES else ""
        extra = ""
        if f.name in ("eps", "train_eps") and isinstance(value, (list, tuple)):
            extra = ("; for a robustness curve over several budgets pass eps_curve=(1/255, 2/255) with eps "
                     "the largest")
        raise error(f"{f.name}= must be {expected}{example}, got {type_name(value)}{extra}")


def type_name(value: Any) -> str:
    """A value's type as an error names it ("a str", "None"): never its text, which is the user's data."""
    return "None" if value is None else f"a {type(value).__name__}"
