"""Errors raised to Python name the API argument, not the command-line flag (docs/python_api.md).

The engines word their refusals for the command line (``--device cpu``, ``--force``), which is
where most runs start. A notebook calls :func:`tailaudit.run_audit` with ``device="cpu"`` and
``force=True``: the API functions re-word a :class:`~audit.errors.TailAuditError` on its way out,
flag by flag, unless the command line itself is the caller (``audit.errors.command_line``, set by ``cli.main``).
"""
from __future__ import annotations

import contextlib
import functools
import re
from typing import Iterator

from audit.errors import COMMAND_LINE, TailAuditError

__all__ = ["MAX_MESSAGE", "for_python", "python_errors"]

MAX_MESSAGE = 1000  # characters of a refusal raised to Python; a longer one is cut (it quotes some input)

# flags whose argument is not the flag's own name with '_' for '-' (--batch-size -> batch_size=)
ARGUMENTS = {"groups": "group_rule", "temperature": "temperatures", "train-steps-total": "steps_total",
             "batch-size-train": "RepairConfig batch_size", "train-steps": "train_steps", "compare": "compare"}
# flags without a value, as the setting that means the same in Python
SWITCHES = {"force": "force=True", "black-box": "black_box=True", "sanity": "sanity=True",
            "independent": "independent=True", "allow-large-input": "allow_large_input=True",
            "pretrained": 'weights="pretrained"', "random-weights": 'weights="random"', "no-download": "download=False",
            "no-html": 'formats without "html"', "no-pdf": 'formats without "pdf"', "eps-per-class": "eps_per_class=True",
            "shift-bn": "shift_bn=True", "no-sync-bn": "sync_bn=False", "quiet": "quiet=True",
            "debug": "the exception's traceback (logging at DEBUG level)", "json": "AuditResults.to_json()"}

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
    from audit.attacks import ATTACKS, SUITES
    from audit.registry import DATASETS, METHODS
    from audit.values import NORMS
    from reat_finetune import config as rc
    from reat_finetune import methods as _methods  # noqa: F401  (fills METHODS)

    words = {"auto", "cpu", "cuda", "off", "bf16", "thirds", "shots", "logit", "malt", "html", "pdf"}
    for group in (ATTACKS.names(), SUITES.names(), DATASETS.names(), METHODS.names(), NORMS, rc.PENALTIES,
                  rc.SCHEDULES, rc.SAMPLERS, rc.AUGMENTS, rc.GUIDES, rc.SMOOTHINGS, rc.SMOOTHING_SHAPES,
                  rc.EPS_SCHEDULES):
        words.update(str(w) for w in group)
    return frozenset(words)


def _argument(match: re.Match[str]) -> str:
    flag, value = match.group(1), match.group(2)
    if flag in SWITCHES:
        return SWITCHES[flag] + (f" {value}" if value else "")
    name = ARGUMENTS.get(flag, flag.replace("-", "_"))
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
