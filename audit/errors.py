"""Errors that mean "the user gave us something we cannot work with".

The CLI maps every :class:`TailAuditError` to exit code 2 and prints its message as one
line (no traceback unless ``--debug``). Messages say what is wrong and what to do.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

# True while cli.main runs a command: errors keep their command-line flags; a Python caller gets them re-worded
# as API arguments (tailaudit/wording.py)
COMMAND_LINE: contextvars.ContextVar[bool] = contextvars.ContextVar("tailaudit_command_line", default=False)


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """The command line is the caller: its errors name flags, as its users type them."""
    token = COMMAND_LINE.set(True)
    try:
        yield
    finally:
        COMMAND_LINE.reset(token)


class TailAuditError(Exception):
    """Base class for user-facing errors (bad input, missing files, impossible settings)."""

    exit_code = 2

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str) and args[0].startswith("Caught ") and "DataLoader worker" in args[0]:
            # torch re-raises a worker's error with the worker's traceback as the message: keep the message itself
            last = args[0].rstrip().splitlines()[-1]
            args = (last.split(": ", 1)[1] if ": " in last else last, *args[1:])
        super().__init__(*args)


class ModelLoadError(TailAuditError):
    """The model file or architecture cannot be loaded."""


class ParityError(TailAuditError):
    """The converted PyTorch model disagrees with onnxruntime."""


class DatasetError(TailAuditError):
    """The dataset cannot be found, read or does not fit the model."""


class ConfigError(TailAuditError):
    """A flag or setting is out of range or inconsistent."""


class ResultsError(TailAuditError):
    """A results file is missing, unreadable or incompatible."""


class UngradableModel(TailAuditError):
    """The model does not work on the data as given (chance-level, collapsed or permuted answers), found by
    the clean check before any attack (audit/checks/precheck.py). Exit code 4, distinct from bad input (2) and the
    CI gate (3)."""

    exit_code = 4
