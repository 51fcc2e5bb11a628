"""One log line every few seconds for long loops: how far, how fast. Never one line per item.

progress = Progress("forecast", total=len(windows), unit="windows")
for lo in range(0, n, batch):
    ...
    progress.advance(batch)    # logs at most every ``every_s`` seconds
progress.done()                # one closing line, only if the loop was long enough to report
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("lit_forecast.progress")


class Progress:
    """Counts items done and logs ``<what>: 12,288 of 31,000 windows (40 %), 310 windows/s`` now and then."""

    def __init__(
        self, what: str, total: int, unit: str = "windows", every_s: float = 5.0, logger: logging.Logger = log
    ):
        self.what, self.total, self.unit, self.every_s, self.log = what, total, unit, every_s, logger
        self.done_count = 0
        self.started = self.last = time.perf_counter()
        self.reported = False

    def advance(self, count: int = 1) -> None:
        """``count`` more items done; log a line if ``every_s`` seconds passed since the last one."""
        self.done_count += count
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last, self.reported = now, True
            self.log.info("%s", self._line(now))

    def done(self) -> None:
        """A closing line with the overall rate, if any progress line was logged (short loops stay quiet)."""
        if self.reported:
            self.log.info("%s (done)", self._line(time.perf_counter()))

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        share = f" ({100 * self.done_count / self.total:.0f} %)" if self.total else ""
        return (
            f"{self.what}: {self.done_count:,} of {self.total:,} {self.unit}{share}, "
            f"{self.done_count / elapsed:,.0f} {self.unit}/s, {elapsed:.0f} s"
        )
