"""A synthetic fleet: the NAB city series split into N taxi zones, in long format.

    python bench/make_zones.py --zones 1000 --output zones.parquet
    python bench/make_zones.py --zones 10 --output zones.csv --seed 1 --source nyc_taxi.csv

Each zone is the city series scaled, shifted and made noisy:

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
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from lit_forecast.config import DataConfig
from lit_forecast.data.fetch import fetch
from lit_forecast.data.source import load_series
from lit_forecast.errors import UserError

SHARE_RANGE = (1 / 5000, 1 / 10)  # zone level as a share of the city total: 500x between the extremes
MAX_SHIFT = 3  # slots of daily-timing shift, either way
DISPERSION_RANGE = (20.0, 200.0)  # negative-binomial size r: variance mu + mu^2 / r
MAX_GAPS = 4  # missing runs per zone
MAX_GAP_SLOTS = 4  # 2 h of 30 min slots: data.max_gap interpolates it
ZONES_PER_CHUNK = 50  # ~0.5 M rows per written batch


@dataclass
class Zone:
    """How one zone is derived from the city series."""

    name: str
    share: float  # expected value = share x city value
    shift: int  # slots; positive: the zone's day runs later than the city's
    dispersion: float  # negative-binomial size
    gaps: list[tuple[int, int]]  # half-open slot ranges left out


def zone_names(zones: int) -> list[str]:
    """'z000', 'z001', ... wide enough that they sort in index order."""
    width = max(3, len(str(zones - 1)))
    return [f"z{i:0{width}d}" for i in range(zones)]


def draw_zones(zones: int, slots: int, slots_per_day: int, seed: int) -> list[Zone]:
    """Parameters of every zone: levels stratified over SHARE_RANGE, the rest from each zone's own stream."""
    rng = np.random.default_rng([seed, zones])
    strata = rng.permutation(zones)  # zone i gets level stratum strata[i]
    lo, hi = np.log(SHARE_RANGE[0]), np.log(SHARE_RANGE[1])
    out = []
    for i, name in enumerate(zone_names(zones)):
        z = np.random.default_rng([seed, zones, i])
        u = (strata[i] + z.uniform()) / zones
        share = float(np.exp(lo + u * (hi - lo)))
        dispersion = float(np.exp(z.uniform(np.log(DISPERSION_RANGE[0]), np.log(DISPERSION_RANGE[1]))))
        out.append(Zone(name, share, int(z.integers(-MAX_SHIFT, MAX_SHIFT + 1)), dispersion, _gaps(z, slots, slots_per_day)))
    return out


def _gaps(rng: np.random.Generator, slots: int, slots_per_day: int) -> list[tuple[int, int]]:
    """0..MAX_GAPS runs of 1..MAX_GAP_SLOTS slots, each inside one day (not on its last slot), on distinct days."""
    days = slots // slots_per_day
    count = int(rng.integers(0, MAX_GAPS + 1))
    # Days 1 .. days-2: never the first or last day, so every gap has known values on both sides.
    chosen = np.sort(rng.choice(np.arange(1, days - 1), size=min(count, max(days - 2, 0)), replace=False))
    gaps = []
    for day in chosen:
        length = int(rng.integers(1, MAX_GAP_SLOTS + 1))
        start = int(rng.integers(0, slots_per_day - length))  # ends before the day's last slot
        gaps.append((day * slots_per_day + start, day * slots_per_day + start + length))
    return gaps


def zone_values(city: np.ndarray, zone: Zone, seed: int, zones: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept slot indices (T',), integer counts (T',)) of one zone from the city series (T,)."""
    T = len(city)
    rng = np.random.default_rng([seed, zones, index, 1])  # the counts' own stream
    expected = zone.share * city[np.clip(np.arange(T) - zone.shift, 0, T - 1)]
    rate = rng.gamma(zone.dispersion, expected / zone.dispersion)  # mean expected, variance expected^2 / r
    counts = rng.poisson(rate)
    keep = np.ones(T, dtype=bool)
    for s, e in zone.gaps:
        keep[s:e] = False
    idx = np.flatnonzero(keep)
    return idx, counts[idx]


def generate(city: np.ndarray, times: np.ndarray, zones: int, seed: int, slots_per_day: int,
             zones_per_chunk: int = ZONES_PER_CHUNK) -> Iterator[pa.Table]:
    """Tables of ``timestamp`` (timestamp[s]), ``zone`` (string), ``value`` (int64), a chunk of zones each.

    city (T,) the source values on a regular grid, times (T,) datetime64 of its slots.
    """
    params = draw_zones(zones, len(city), slots_per_day, seed)
    times = times.astype("datetime64[s]")
    for lo in range(0, zones, zones_per_chunk):
        chunk = params[lo : lo + zones_per_chunk]
        parts = [zone_values(city, z, seed, zones, lo + j) for j, z in enumerate(chunk)]
        idx = np.concatenate([p[0] for p in parts])
        codes = np.repeat(np.arange(len(chunk), dtype=np.int32), [len(p[0]) for p in parts])
        names = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array([z.name for z in chunk])).cast(pa.string())
        yield pa.table({
            "timestamp": pa.array(times[idx]),
            "zone": names,
            "value": pa.array(np.concatenate([p[1] for p in parts]).astype(np.int64)),
        })


def write(tables: Iterator[pa.Table], output: str) -> int:
    """Write the chunks to ``output`` (.csv or .parquet) as they come; returns the row count."""
    rows = 0
    if output.endswith(".parquet"):
        writer = None
        for table in tables:
            writer = writer or pq.ParquetWriter(output, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
        if writer:
            writer.close()
    elif output.endswith(".csv"):
        with open(output, "wb") as sink:
            sink.write(b"timestamp,zone,value\n")  # the CSV writer would quote the header
            writer = None
            for table in tables:
                writer = writer or pa_csv.CSVWriter(sink, table.schema, write_options=pa_csv.WriteOptions(
                    include_header=False, quoting_style="none", batch_size=1 << 16))
                writer.write_table(table)
                rows += table.num_rows
            if writer:
                writer.close()
    else:
        raise ValueError(f"{output}: the file name must end in .csv or .parquet")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zones", type=int, default=100, help="number of zones (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default=DataConfig().source,
                        help="the city CSV (timestamp,value); default the NAB file, from the cache "
                             "(~/.cache/lit_forecast or $LIT_FORECAST_CACHE) or downloaded once")
    parser.add_argument("--output", required=True, help="zones.csv or zones.parquet")
    args = parser.parse_args()
    if args.zones < 1:
        sys.exit("error: --zones must be at least 1")
    if not args.output.endswith((".csv", ".parquet")):
        sys.exit(f"error: {args.output}: the file name must end in .csv or .parquet")

    start = time.perf_counter()
    default = DataConfig()
    data = DataConfig(source=args.source, sha256=default.sha256 if args.source == default.source else None)
    try:
        series, _ = load_series(fetch(data), data, fill_gaps=False)  # on the 30 min grid, missing slots NaN
    except UserError as err:
        sys.exit(f"error: {err}")
    if len(series) != 1:
        sys.exit(f"error: {args.source}: expected one city series (timestamp,value), found {len(series)}")
    (city,) = series
    values = pd.Series(city.values).interpolate(limit_area="inside").bfill().ffill().to_numpy()
    times = pd.date_range(city.start, periods=len(values), freq=data.freq).to_numpy()
    spd = int(pd.Timedelta("1D") / pd.Timedelta(data.freq))
    rows = write(generate(values, times, args.zones, args.seed, spd), args.output)
    seconds = time.perf_counter() - start
    size = os.path.getsize(args.output)
    print(f"zones {args.zones:,}  rows {rows:,}  {seconds:.1f} s  {args.output} {size / 2**20:,.1f} MiB")


if __name__ == "__main__":
    main()
