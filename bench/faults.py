"""Run the fault-injection suite (tests/faults) and print its table for the README.

    python bench/faults.py            # every fault class, each in a real local Ray run (a few minutes)

Each test of tests/faults/test_faults.py and tests/faults/test_interrupts.py (Ctrl-C, SIGTERM,
another Ray on the machine, two runs at once) injects one class of fault into train.py on the tiny
config and records: faults injected, survived (or refused cleanly, with a message saying how to
resume), epochs lost beyond the last readable checkpoint, and wrong results (a run that ended
without all its epochs, or with a checkpoint it should not have).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        rows_file = Path(scratch) / "faults.jsonl"
        env = {**os.environ, "LIT_FORECAST_FAULTS": str(rows_file)}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
                               "tests/faults/test_faults.py", "tests/faults/test_interrupts.py"],
                              cwd=ROOT, env=env)
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    print()
    print(f"{'fault':<78} {'injected':>8} {'survived':>8} {'epochs lost':>11} {'wrong':>6}  note")
    for r in rows:
        print(f"{r['fault']:<78} {r['injected']:>8} {r['survived']:>8} {r['epochs_lost']:>11} {r['wrong_results']:>6}  {r['note']}")
    total = {k: sum(r[k] for r in rows) for k in ("injected", "survived", "epochs_lost", "wrong_results")}
    print(f"{'total':<78} {total['injected']:>8} {total['survived']:>8} {total['epochs_lost']:>11} {total['wrong_results']:>6}")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
