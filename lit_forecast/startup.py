"""What the scripts do before their heavy imports: Ctrl-C or SIGTERM while starting gives one line.

Importing torch, Lightning and Ray takes seconds; an interrupt then would print a long
traceback from deep inside them. Only the standard library is imported here, so the guard is
in place before anything slow runs. The scripts' own handlers replace it once they are ready.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum: int, frame) -> None:
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    print(f"error: interrupted ({name}) while starting: nothing was done", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def guard_startup() -> None:
    """Until replaced, Ctrl-C and SIGTERM end the process at once with one ``error:`` line (status 128 + signal)."""
    signal.signal(signal.SIGINT, _interrupted_while_starting)
    signal.signal(signal.SIGTERM, _interrupted_while_starting)
