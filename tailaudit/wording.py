"""Errors raised to Python name the API argument, not the command-line flag (docs/python_api.md).

The engines word their refusals for the command line (``--device cpu``, ``--force``), which is
where most runs start. A notebook calls :func:`tailaudit.run_audit` with ``device="cpu"`` and
``force=True``: the API functions re-word a :class:`~audit.errors.TailAuditError` on its way out,
flag by flag, unless the command line itself is the caller (``audit.errors.command_line``, set by ``cli.main``).
"""
from __future__ import annotations

import contextlib
import functools
import json
import re
from typing import Iterator

from audit.errors import COMMAND_LINE, TailAuditError

__all__ = ["MAX_MESSAGE", "for_python", "python_errors"]

MAX_MESSAGE = 1000  # characters of a refusal raised to Python; a longer one is cut (it quotes some input)

# the command line's own flags, as what means the same to a Python caller (every other flag: audit/options.py)
EXTRA_ARGUMENTS = {"compare": "compare", "train-steps": "train_steps"}
EXTRA_SWITCHES = {"no-html": 'formats without "html"', "no-pdf": 'formats without "pdf"',
                  "debug": "the exception's traceback (logging at DEBUG level)", "json": "AuditResults.to_json()"}


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    """(flag -> Python argument where the names differ, switch -> the setting that means the same), from the one
    declaration of each option: ``--groups`` -> ``group_rule``, ``--no-download`` -> ``download=False``."""
    from audit.config import AuditConfig
    from audit.options import OPTIONS
    from reat_finetune import config as _repair  # noqa: F401  (declares the repair's options)

    audit_fields = set(AuditConfig.__dataclass_fields__)
    arguments, switches = dict(EXTRA_ARGUMENTS), dict(EXTRA_SWITCHES)
    seen = set(arguments) | set(switches)
    for opt in OPTIONS:
        flag = opt.flag.lstrip("-")
        if opt.config is None or opt.positional or flag in seen:
            continue
        seen.add(flag)  # a flag declared for two commands (--out) reads as the first
        name = f"RepairConfig {opt.name}" if opt.config == "repair" and opt.name in audit_fields else opt.name
        if opt.kind == "switch":
            switches[flag] = f"{opt.name}={json.dumps(opt.const) if isinstance(opt.const, str) else opt.const}"
        elif name != flag.replace("-", "_"):
            arguments[flag] = name
    return arguments, switches


_NUM = r"[0-9][0-9./eE+-]*"
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)"
                   rf"(?: ('[^'\s]{{1,60}}'|{_NUM}(?:,{_NUM})+|[^\s,;:)`'\"]+))?")
SEQUENCES = ("mean", "std", "temperatures")  # arguments that take a tuple of numbers
_NUMBER = re.compile(r"^[0-9][0-9./eE+-]*$")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_=.,\[\]]*$")


@functools.lru_cache(maxsize=1)
def _choices() -> frozenset[str]:
    """Every word a flag takes as its value (devices, suites, datasets, methods, ...): those are quoted."""
    from audit import data as _data  # noqa: F401  (fills DATASETS)
    from audit.attacks import ATTACKS
    from audit.options import OPTIONS
    from audit.registry import DATASETS

    _tables()  # declares every option
    words = {"auto", "cpu", "cuda", "html", "pdf", *ATTACKS.names(), *DATASETS.names()}
    for opt in OPTIONS:
        if opt.kind == "choice":
            words.update(opt.choice_list())
    return frozenset(words)


def _argument(match: re.Match[str]) -> str:
    flag, value = match.group(1), match.group(2)
    arguments, switches = _tables()
    if flag in switches:
        return switches[flag] + (f" {value}" if value else "")
    name = arguments.get(flag, flag.replace("-", "_"))
    if value is None:
        return f"{name}="
    word = value.rstrip(".")
    tail = value[len(word):]
    if word.startswith("'"):  # a quoted value: the text the user gave
        return f"{name}={word}{tail}"
    if name in SEQUENCES and all(_NUMBER.match(v) for v in word.split(",")):
        values = word.split(",")
        return f"{name}=({', '.join(values)}{',' if len(values) == 1 else ''}){tail}"
    if _NUMBER.match(word) or _PLACEHOLDER.match(word):
        return f"{name}={word}{tail}"
    if word in _choices() or re.fullmatch(r"cuda:\w+", word) or "/" in word or "\\" in word:  # a word or a path
        return f'{name}="{word}"{tail}'
    return f"{name}= {value}"


def for_python(message: str) -> str:
    """``message`` with every command-line flag written as its Python argument, cut to :data:`MAX_MESSAGE`."""
    text = _FLAG.sub(_argument, message).replace("the flag", "the argument").replace("same command", "same call")
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


@contextlib.contextmanager
def python_errors() -> Iterator[None]:
    """Re-word a :class:`TailAuditError` (and a repair's Ctrl-C note) raised out of the block for a Python caller."""
    try:
        yield
    except TailAuditError as exc:
        if not COMMAND_LINE.get() and exc.args and isinstance(exc.args[0], str):
            exc.args = (for_python(exc.args[0]), *exc.args[1:])
        raise
    except KeyboardInterrupt as exc:
        if not COMMAND_LINE.get() and isinstance(getattr(exc, "message", None), str):
            exc.message = for_python(exc.message)  # type: ignore[attr-defined]
        raise
