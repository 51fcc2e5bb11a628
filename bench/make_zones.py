"""A synthetic fleet: the NAB city series split into N taxi zones, in long format.

    python -m bench.make_zones --zones 1000 --output zones.parquet
    python -m bench.make_zones --zones 10 --output zones.csv --seed 1 --data nyc_taxi.csv
    python -m bench.make_zones --zones 8 --output zones.csv --synthetic     # no data file needed

Each zone is the city series (the NAB file, read by the project's loader with its checksum, or
with ``--synthetic`` a generated one: daily and weekly cycles around 15,000) scaled, shifted
and made noisy (the generator is ``bench.common``'s, which bench/gpu.py uses too):

- **level**: a log-uniform share of the city total between 1/5,000 (about 3 passengers per
  half-hour) and 1/10 (about 1,500), stratified over the zones so that any fleet of a few
  zones spans more than two orders of magnitude;
- **timing**: the whole series shifted by -3 .. +3 slots (up to 1.5 h), so every zone has its
  own daily peak times;
- **counts**: negative binomial (a Poisson whose rate is gamma-distributed) around the scaled
  expectation, with a per-zone dispersion, so values are non-negative integers;
- **gaps**: 0-4 missing runs of 1-4 slots (at most 2 h, what ``data.max_gap`` interpolates),
  each inside one day and never covering the last slot before midnight, so every midnight
  stays a valid backtest cutoff (a forecast refuses a cutoff whose previous slot is missing).

The output has columns ``timestamp,zone,value`` (``--set data.series_column=zone`` in
train.py), as CSV or Parquet by the extension of ``--output``. Zones are generated and
written in chunks, so memory does not grow with the number of zones. A zone's data depends
only on the seed, the number of zones and its index.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pandas as pd

from bench.common import add_data_argument, add_output_argument, data_config, generate, synthetic_city, write_fleet
from lit_forecast.errors import UserError
from lit_forecast.inference.cutoffs import read_series

START, END = "2014-07-01", "2015-02-01"  # --synthetic: the NAB file's span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zones", type=int, default=100, help="number of zones (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    add_data_argument(
        parser,
        "the city CSV (timestamp,value); default the NAB file, from the cache "
        "(~/.cache/lit_forecast or $LIT_FORECAST_CACHE) or downloaded once",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help=f"a generated city series ({START} .. {END}) instead of --data: no data file needed",
    )
    add_output_argument(parser, "zones.csv or zones.parquet", required=True)
    args = parser.parse_args()
    if args.zones < 1:
        sys.exit("error: --zones must be at least 1")
    if not args.output.endswith((".csv", ".parquet")):
        sys.exit(f"error: {args.output}: the file name must end in .csv or .parquet")
    if args.synthetic and args.data:
        sys.exit("error: --synthetic generates the city series: leave out --data")

    start = time.perf_counter()
    data = data_config(args.data)
    spd = int(pd.Timedelta("1D") / pd.Timedelta(data.freq))
    if args.synthetic:
        times = pd.date_range(START, END, freq=data.freq, inclusive="left").to_numpy()
        values = synthetic_city(len(times), spd, args.seed)
    else:
        try:
            series = read_series(data)  # on the data.freq grid, missing slots NaN
        except UserError as err:
            sys.exit(f"error: {err}")
        if len(series) != 1:
            sys.exit(f"error: {data.source}: expected one city series (timestamp,value), found {len(series)}")
        (city,) = series
        values = pd.Series(city.values).interpolate(limit_area="inside").bfill().ffill().to_numpy()
        times = pd.date_range(city.start, periods=len(values), freq=data.freq).to_numpy()
    rows = write_fleet(generate(values, times, args.zones, args.seed, spd), args.output)
    seconds = time.perf_counter() - start
    size = os.path.getsize(args.output)
    print(f"zones {args.zones:,}  rows {rows:,}  {seconds:.1f} s  {args.output} {size / 2**20:,.1f} MiB")


if __name__ == "__main__":
    main()
