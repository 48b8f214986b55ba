"""Corruption names and groups (Hendrycks & Dietterich's common corruptions), and ``--corruptions`` parsing.

The names, their order and the split into 15 ``common`` and 4 held-out corruptions are
ImageNet-C's and CIFAR-10-C's; the images come from the ``imagecorruptions-imaug`` package
(audit/corruptions/generate.py). docs/corruptions.md says where its parameters differ from CIFAR-10-C's.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..errors import ConfigError

COMMON: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",  # noise
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",  # blur
    "snow", "frost", "fog", "brightness",  # weather
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",  # digital
)
HELD_OUT: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL: tuple[str, ...] = COMMON + HELD_OUT
FAMILY: dict[str, str] = {
    **{n: "noise" for n in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")},
    **{n: "blur" for n in ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur")},
    **{n: "weather" for n in ("snow", "frost", "fog", "brightness", "spatter")},
    **{n: "digital" for n in ("contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate")},
}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
SETS = {"common": COMMON, "all": ALL}


def corruption_id(name: str) -> int:
    """A corruption's fixed number (its place in :data:`ALL`), part of every point's seed."""
    return ALL.index(name)


def parse_corruptions(text: Optional[str | Sequence[str]]) -> tuple[str, ...]:
    """``common`` | ``all`` | ``NAME[,NAME…]`` (or a list of names) -> the names in registry order; () for none."""
    if text is None:
        return ()
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    if not items:
        raise ConfigError("--corruptions is empty; give common, all or names such as fog,jpeg_compression")
    chosen: set[str] = set()
    for item in items:
        if item in SETS:
            chosen.update(SETS[item])
        elif item in ALL:
            chosen.add(item)
        else:
            raise ConfigError(f"--corruptions: unknown corruption {item!r}; choose common, all or from "
                              f"{', '.join(ALL)}")
    return tuple(n for n in ALL if n in chosen)


def parse_severities(text: Optional[str | int | Sequence[int]]) -> tuple[int, ...]:
    """``--severity``: one of 1..5, a comma list, or ``all`` (the default) -> ascending severities."""
    if text is None or text == "all":
        return SEVERITIES
    raw = [text] if isinstance(text, int) else (text.split(",") if isinstance(text, str) else list(text))
    out: set[int] = set()
    for r in raw:
        try:
            v = int(str(r).strip())
        except ValueError:
            raise ConfigError(f"--severity must be 1..5, a list such as 1,3,5, or all; got {text!r}") from None
        if v not in SEVERITIES:
            raise ConfigError(f"--severity must be between 1 and 5 (or all), got {v}")
        out.add(v)
    return tuple(sorted(out))
