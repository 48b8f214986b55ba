"""Text that reaches the terminal: no control characters, errors on one line, library warnings via logging.

Class names, file names and model specs come from the user's files; an escape sequence in a
class folder name must not drive the terminal. Every string tailaudit prints (summary,
comparison, error lines) goes through :func:`terminal_safe` or :func:`one_line`.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import select
import sys
import warnings

# C0 controls except newline and tab, DEL, C1 controls, and bidi overrides / isolates
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with control characters (ESC, BEL, CR, C1, bidi overrides) replaced by '?'; newlines kept."""
    return _CONTROL.sub("?", str(text))


_CONTROL_ALL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def inline_safe(text: str) -> str:
    """A user string printed inside one line (a class name in a table row, a log message): every control
    character, newline and tab included, replaced by '?', so that it can neither drive the terminal nor
    start a line of its own."""
    return _CONTROL_ALL.sub("?", str(text))


def one_line(text: str) -> str:
    """:func:`terminal_safe`, with newlines and tabs folded into spaces (one error, one line)."""
    return " ".join(terminal_safe(text).split())


class SafeFormatter(logging.Formatter):
    """A log formatter whose output is :func:`terminal_safe` (log lines quote user strings); the message itself
    stays on one line (:func:`inline_safe`: a newline in a class name is a '?'), a --debug traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: D102, N802 (logging's name)
        return inline_safe(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102
        return terminal_safe(super().format(record))


class _OnceFilter(logging.Filter):
    """Library log records once each; all missing-glyph notes folded into one line."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()
        self.glyph_said = False

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        message = record.getMessage()
        if ".notdef glyph" in message or ("glyph" in message.lower() and "missing from" in message):
            if self.glyph_said:
                return False
            self.glyph_said = True
            record.msg = ("some characters (first: %s) have no glyph in the report's fonts and show as boxes in "
                          "the PDF; the HTML report shows them")
            record.args = (message.rsplit(":", 1)[-1].strip()[:40],)
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


_ONCE = _OnceFilter()
NOISY_LOGGERS = ("weasyprint", "fontTools", "matplotlib", "PIL", "py.warnings")
LIBRARY_LOGGERS = ("huggingface_hub", "timm", "urllib3", "httpx")
_ROUTED = False


def route_warnings(debug: bool = False) -> None:
    """Send Python warnings (matplotlib missing glyphs, torch's pickle notes, ...) through logging.

    They go to the ``py.warnings`` logger, shown with ``--debug`` and hidden otherwise; each
    distinct warning is emitted once per process. tailaudit's own warnings are log records and
    are not affected.
    """
    global _ROUTED
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and not isinstance(handler.formatter, SafeFormatter):
            fmt = handler.formatter._fmt if handler.formatter is not None else None  # noqa: SLF001
            handler.setFormatter(SafeFormatter(fmt))
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if debug else logging.ERROR)
    for name in LIBRARY_LOGGERS:  # libraries' own warnings (hub retries, ...): only with --debug
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.ERROR)
    _ONCE.seen.clear()  # once per command run
    _ONCE.glyph_said = False
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _ONCE not in logger.filters:
            logger.addFilter(_ONCE)
    if not _ROUTED:
        warnings.filterwarnings("once", module="matplotlib")
        warnings.filterwarnings("once", message=".*[Gg]lyph.*missing from.*")
        warnings.filterwarnings("once", message=".*weights_only.*")
        _ROUTED = True


# -- standard output that a locale cannot encode, or that is closed or full -----------------------------------


def tolerant_stdout() -> None:
    """Class names a locale cannot encode (LC_ALL=C: ASCII) print as \\u escapes instead of a traceback."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
            stream.reconfigure(errors="backslashreplace")


def stdout_broken(exc: OSError) -> bool:
    """Whether ``exc`` is standard output failing: a pipe whose reader has gone (poll says so), or a write error
    without a file name (every file tailaudit writes is named in its own error) on a full or failing device."""
    if exc.filename is not None or exc.errno not in (errno.EPIPE, errno.ENOSPC, errno.EIO, errno.EFBIG,
                                                     getattr(errno, "EDQUOT", errno.ENOSPC)):
        return False
    if exc.errno != errno.EPIPE:
        return True
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (an in-process caller's stream)
        return False


def stdout_gone(exc: OSError) -> int:
    """A closed pipe (``| head -1``) ends quietly with SIGPIPE's status, a full device with one line, as Unix tools
    do; the unwritten text goes to /dev/null so that the interpreter's last flush says nothing either."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (an in-process caller's stream)
        pass
    if exc.errno == errno.EPIPE:
        return 141
    print(f"tailaudit: error: cannot write to standard output ({exc.strerror or exc}); redirect it to a file or "
          "a device with space (files under --out are written as usual)", file=sys.stderr)
    return 2
