"""The errors a user can cause, under one base that the command-line scripts catch.

Each message is written for the person at the terminal: it names the file, row, series, key
or run at fault and says what to do. The scripts print it and exit with status 2; anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import reprlib


class UserError(ValueError):
    """Base of every error that means "the input or the request is wrong", not "the code is"."""


class ConfigError(UserError):
    """A configuration value is missing, unknown, of the wrong type or inconsistent."""


class StorageError(UserError, OSError):
    """The storage at a location cannot be used: a path or URI no filesystem can open (unknown or
    malformed), or a store that does not answer. The message names the location."""


class DataError(UserError):
    """The input data cannot be used; the message names the file and the offending rows."""


class RunError(UserError):
    """A run cannot start or continue as asked; the message says what to do instead."""


class CheckpointError(UserError):
    """A run or checkpoint cannot be found, read or used as asked; the message names it."""


class CheckpointReadError(CheckpointError, OSError):
    """Reading the checkpoint's bytes failed (perhaps for a moment: remote storage); worth a retry."""


class CutoffError(UserError):
    """A cutoff cannot be forecast from the data; the message names the cutoff and the series."""


SHOWN_MAX = 200  # characters of one offending value in a message


_REPR = reprlib.Repr()  # Python 3.11's Repr takes its limits as attributes
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = SHOWN_MAX


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """``repr(value)`` for a message, at most ``limit`` characters: a longer one is cut with an ellipsis and its size.

    Built with ``reprlib``, so a huge or deeply nested value is never turned into text whole.
    """
    short = _REPR.repr(value)
    size = (
        f"{len(value):,} items"
        if isinstance(value, (list, tuple, dict, set))
        else (f"{len(value):,} characters" if isinstance(value, str) else "")
    )
    if len(short) > limit:
        short = short[:limit] + "..."
    elif "..." not in short or not size:
        return short
    return f"{short} ({size})" if size else short


def cut(text: str, limit: int = SHOWN_MAX) -> str:
    """``text`` itself, cut to ``limit`` characters with an ellipsis and the full size (for names and paths)."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"
