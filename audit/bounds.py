"""Documented limits on every number a user can give, and the checks that enforce them.

One place for the bounds (docs/bad_input.md lists them) so that the CLI's argparse types,
the dataclass configs and the loaders refuse the same things with the same words. A flag
added later needs one line: ``type=bounded_int("--queries", 1, MAX_QUERIES)``.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Optional

from .errors import ConfigError
from .values import parse_number

# -- attack and run sizes ---------------------------------------------------------------
MAX_STEPS = 10_000  # attack iterations (PGD steps, training PGD steps)
MAX_QUERIES = 100_000  # Square queries per point
MAX_RESTARTS = 100  # APGD restarts per point
MAX_TARGETS = 999  # APGD-T target classes
MAX_BATCH = 65_536  # batch sizes (attack and training)
MAX_EPOCHS = 10_000
MAX_TRAIN_STEPS = 10_000_000  # repair budget in optimizer steps
MAX_EVALUATIONS = 1_000  # validation checkpoints of a repair
MAX_N_PER_CLASS = 1_000_000
MAX_CLASSES = 100_000
MAX_THREADS = 1_024
MAX_WORKERS = 256  # DataLoader worker processes
SEED_MAX = 2**63 - 1  # seeds are 0 .. 2**63 - 1 (torch and numpy take 64-bit seeds)

# -- floats -------------------------------------------------------------------------------
TEMPERATURE_RANGE = (1e-3, 1e3)  # Temperature-PGD T (finite, positive)
MAX_LR = 10.0
MAX_COEFFICIENT = 1e6  # --tail-lambda, --margin
MAX_NORM_STD = 1e6  # |--mean| bound; --std in (0, MAX_NORM_STD]

# -- memory: images, model inputs, saved arrays, JSON -------------------------------------
MAX_IMAGE_PIXELS = 50_000_000  # decoded pixels of one data image (about 150 MB as RGB)
MAX_INPUT_SIDE = 1_024  # height / width of the model input, unless --allow-large-input
MAX_INPUT_VALUES = 3 * 1_024 * 1_024  # C*H*W of one model input, unless --allow-large-input
MAX_EXAMPLES_BYTES = 256 * 2**20  # total declared bytes of the arrays in examples.npz
MAX_JSON_BYTES = 64 * 2**20  # results.json, --class-counts
MAX_PICKLE_BYTES = 1 * 2**30  # one CIFAR batch pickle (the official ones are 31 MB and 155 MB)
# a .pt checkpoint (a zip archive) may unpack to at most this many times its size plus the slack: torch.save
# stores its entries uncompressed, so a compressed entry that expands further is a decompression bomb
MAX_ARCHIVE_EXPANSION = 4
ARCHIVE_SLACK_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 32  # nesting of any JSON file tailaudit reads
MAX_COUNT = 10**12  # training counts and other tallies read from files


def check_int(value: object, name: str, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi]; ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, float) or isinstance(value, bool):
                raise ValueError
            value = int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{name} must be a whole number in {lo}..{hi}, got {value!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in {lo}..{hi}, got {_short(value)}")
    return value


def check_float(value: object, name: str, lo: float, hi: float, *, lo_open: bool = False,
                hi_open: bool = False) -> float:
    """``value`` as a finite float in the given range; ConfigError naming ``name`` otherwise."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    span = f"{left}{lo:g}, {hi:g}{right}"
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number in {span}, got {value!r}")
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        raise ConfigError(f"{name} must be in {span}, got {v:g}")
    return v


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"a {len(text)}-digit number"


def _argparse_type(check: Callable[[str], object]) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return check(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(_strip_name(str(exc))) from None

    return parse


def _strip_name(message: str) -> str:
    # argparse already prefixes "argument --x:"; keep the rest of our sentence
    head, sep, rest = message.partition(" must ")
    return f"must {rest}" if sep and head.startswith("-") else message


def bounded_int(name: str, lo: int, hi: int) -> Callable[[str], object]:
    """argparse ``type=``: a whole number in [lo, hi]."""
    return _argparse_type(lambda text: check_int(text, name, lo, hi))


def bounded_float(name: str, lo: float, hi: float, *, lo_open: bool = False,
                  hi_open: bool = False) -> Callable[[str], object]:
    """argparse ``type=``: a finite number (``0.03``, ``8/255``, ``1e-2``) in the given range."""
    return _argparse_type(lambda text: check_float(parse_number(text, name), name, lo, hi,
                                                   lo_open=lo_open, hi_open=hi_open))


def check_input_size(size: tuple[int, ...], where: str, allow_large: bool) -> None:
    """Refuse model inputs above MAX_INPUT_SIDE / MAX_INPUT_VALUES unless explicitly allowed."""
    if allow_large:
        return
    c, h, w = (int(v) for v in size[-3:])
    if max(h, w) > MAX_INPUT_SIDE or c * h * w > MAX_INPUT_VALUES:
        raise ConfigError(f"{where} takes {c}x{h}x{w} inputs, above tailaudit's limit of {MAX_INPUT_SIDE} pixels "
                          f"a side ({MAX_INPUT_VALUES} values per image); pass --allow-large-input if this is "
                          "intended (memory grows with batch size x input size)")


def optional_check_int(value: Optional[int], name: str, lo: int, hi: int) -> Optional[int]:
    return None if value is None else check_int(value, name, lo, hi)
