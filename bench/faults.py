"""Run the fault-injection suite (tests/faults) and print its table.

    python -m bench.faults                          # every fault class, each in a real local Ray run (minutes)
    python -m bench.faults --output faults.json     # the table's rows as JSON too

Each test of tests/faults/test_faults.py, tests/faults/test_interrupts.py (Ctrl-C, SIGTERM,
another Ray on the machine, two runs at once) and tests/faults/test_nodes.py (a worker node lost,
a node that joins, the head node lost, on a cluster of several Ray nodes on this machine) injects
one class of fault into train.py on the tiny config and records: faults injected, survived (or
refused cleanly, with a message saying how to resume), epochs lost beyond the last readable
checkpoint, and wrong results (a run that ended without all its epochs, or with a checkpoint it
should not have). Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, add_output_argument

COUNTS = ("injected", "survived", "epochs_lost", "wrong_results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_argument(parser, "also write the rows and their totals as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        rows_file = Path(scratch) / "faults.jsonl"
        env = {**os.environ, "LIT_FORECAST_FAULTS": str(rows_file)}
        pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow"]
        done = subprocess.run(
            [*pytest, "tests/faults/test_faults.py", "tests/faults/test_interrupts.py", "tests/faults/test_nodes.py"],
            cwd=ROOT,
            env=env,
        )
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    total = {k: sum(r[k] for r in rows) for k in COUNTS}
    print()
    print(f"{'fault':<78} {'injected':>8} {'survived':>8} {'epochs lost':>11} {'wrong':>6}  note")
    for r in [*rows, {"fault": "total", **total, "note": ""}]:
        counts = f"{r['injected']:>8} {r['survived']:>8} {r['epochs_lost']:>11} {r['wrong_results']:>6}"
        print(f"{r['fault']:<78} {counts}  {r['note']}".rstrip())
    if args.output:
        Path(args.output).write_text(json.dumps({"rows": rows, "total": total}, indent=1) + "\n")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
