"""Reading one data file as the preparation does (readers.read_file: parse and check every row).

    python bench/make_zones.py --zones 1000 --output /tmp/scale/zones-1000.parquet
    python bench/reading.py /tmp/scale/zones-1000.parquet --series-column zone

Prints the best of --repeat reads, in rows/s, in this one process.
"""

from __future__ import annotations

import argparse
import time

import pyarrow.fs as pafs

from lit_forecast.config import DataConfig
from lit_forecast.data import readers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a local CSV or Parquet file")
    parser.add_argument("--series-column", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    config = DataConfig(source=args.path, sha256=None, series_column=args.series_column)
    best, rows = float("inf"), 0
    for _ in range(args.repeat):
        started = time.perf_counter()
        rows = len(readers.read_file(pafs.LocalFileSystem(), args.path, args.path, config, {}).rows)
        best = min(best, time.perf_counter() - started)
    print(f"read_file {args.path}: {rows:,} rows, best of {args.repeat} {best:.2f} s = {rows / best:,.0f} rows/s")


if __name__ == "__main__":
    main()
