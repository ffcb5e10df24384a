"""Errors a user can fix, and the one place the command line turns them into exit codes.

Exit codes of every ``cgspn-bench`` command: 0 success; 1 only where a command judges something
and it failed (a gate's regression, ``validate``'s invalid files); 2 a usage or input error (a
bad argument, file, directory or row), reported as one line ``error: ...`` naming the file,
field or path and what is allowed; 130 interrupted (SIGINT).
"""

from __future__ import annotations

import argparse
import math
import re
import reprlib
from typing import Any

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = 60, 60, 6, 6, 3


class InputError(ValueError):
    """Bad input or usage (an argument, a file, a run directory); the message is the whole report."""


def short(value: Any) -> str:
    """A bounded ``repr`` for error messages (a huge or deeply nested value stays one short line)."""
    return _repr.repr(value)


def describe(exc: BaseException) -> str:
    """One line for an error the user can act on (OS errors name the path and the reason)."""
    if isinstance(exc, OSError) and exc.strerror:
        path = exc.filename if exc.filename is not None else ""
        return f"{path}: {exc.strerror}" if path else exc.strerror
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start}: {exc.reason})"
    return " ".join(str(exc).split()) or type(exc).__name__


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``--budget-scale``); anything else is a usage error (exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def unsafe_name(name: str) -> str | None:
    """Why ``name`` cannot be a folder name (a scenario or distillation config name), or None."""
    if SAFE_NAME.fullmatch(name):
        return None
    return (f"{short(name)} is not allowed: it names a folder, so it must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")


# What the command line reports as ``error: ...`` with exit code 2 instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (InputError, OSError, UnicodeDecodeError)
