"""The errors a user can cause, under one base that the command-line scripts catch.

Each message is written for the person at the terminal: it names the file, row, series, key
or run at fault and says what to do. The scripts print it and exit with status 2; anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


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
