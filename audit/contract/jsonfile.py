"""Reading JSON written by someone else: bounded size and nesting, no NaN or Infinity.

Python's json accepts ``NaN``/``Infinity`` and recurses once per nesting level, so a small
file of brackets is a RecursionError; :func:`read_json` turns all of that into ValueError
with one readable sentence, which callers wrap in their own error type.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ..bounds import MAX_JSON_BYTES, MAX_JSON_DEPTH


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (NaN and Infinity are not allowed)")


def _depth_ok(text: str, limit: int) -> bool:
    """Bracket nesting outside strings stays within ``limit`` (a linear scan, no recursion)."""
    depth = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with a nesting limit and no NaN/Infinity; ValueError otherwise."""
    if not _depth_ok(text, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None


def read_text(path: Path, *, max_bytes: int = MAX_JSON_BYTES) -> str:
    """A UTF-8 text file of at most ``max_bytes``, read without trusting its reported size (``/dev/zero``,
    a pipe or a growing file stop at the limit); OSError/ValueError with a readable message otherwise."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{size:,} bytes, above the limit of {max_bytes:,} bytes")
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"more than {max_bytes:,} bytes, the limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_json(path: Path, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Read and parse a JSON file within the limits; OSError/ValueError with a readable message otherwise."""
    return parse_json(read_text(path, max_bytes=max_bytes), max_depth=max_depth)


def read_json_file(path: Path, error: type[Exception], *, what: str, fix: str, missing: str | None = None) -> Any:
    """:func:`read_json` with every failure raised as one ``error`` line that names the file: absent (``missing``
    follows the path, default "not found; ``fix``"), not a regular file (a device or a pipe is never read),
    unreadable, too large, nested too deep or not JSON (``fix``). ``what`` names the file, e.g. "results file"."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise error(f"{what} {path} {missing or f'not found; {fix}'}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device or a pipe)"
        raise error(f"{what} {path} is {kind}; {fix}")
    try:
        return read_json(path)
    except OSError as exc:
        raise error(f"cannot read {what} {path} ({exc.strerror or exc}); check the file's permissions") from None
    except ValueError as exc:
        raise error(f"{what} {path} cannot be used ({exc}); {fix}") from None
