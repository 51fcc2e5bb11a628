"""How much does a config's accuracy hang on its seed? Trains it once per seed and scores each run.

    python -m bench.studies.seeds                                        # the local default, seeds 42 7 3
    python -m bench.studies.seeds --label ema --set train.ema_decay=0.995
    python -m bench.studies.seeds --config runs/tune/best.yaml --seeds 42 7 3 --label best

Each seed is a real ``python train.py --name seeds-<label>-<seed> --set train.seed=<seed>``
(plus ``--config`` and every ``--set``) in ``--storage``; a run that already finished is scored,
not trained again. Each is scored on December (validation: the best checkpoint's ``val/mae``
over all 1,441 windows, and the epoch it came from), which is what a choice between configs may
use, and on January (the test month: ``python -m bench.accuracy``'s backtest with infer.py's
default flags), which it may not. Printed: one row per seed, then the mean, the worst seed (the
highest error) and the spread (highest minus lowest) of each column.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from bench.accuracy import HEADLINE_CUTOFFS
from lit_forecast import cli, layout, storage
from lit_forecast.errors import UserError
from lit_forecast.inference import defaults
from lit_forecast.inference.cutoffs import parse_cutoffs
from lit_forecast.inference.pipeline import InferenceRequest, infer

ROOT = Path(__file__).resolve().parents[2]
SEEDS = (42, 7, 3)


def train(config: str | None, storage_root: str, name: str, seed: int, overrides: list[str]) -> str:
    """The run folder of ``train.py`` for this seed, trained unless it has finished already."""
    run = storage.join(storage_root, name)
    if storage.exists(storage.join(run, layout.SUMMARY_FILE)):
        print(f"{name}: finished already, scored as it is", flush=True)
        return run
    cmd = [sys.executable, "train.py", "--storage", storage_root, "--name", name, "--set", f"train.seed={seed}"]
    cmd += ["--config", config] if config else []
    for item in overrides:
        cmd += ["--set", item]
    print("$ " + " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode != 0:
        cli.die(f"training seed {seed} failed (exit {done.returncode}): see its output above")
    return run


def score(run: str) -> dict:
    """December's best val/mae and its epoch, and January's backtest with infer.py's default flags."""
    summary = layout.read_summary(run)
    result = infer(
        InferenceRequest(
            run=run,
            storage=str(Path(run).parent),
            cutoffs=parse_cutoffs([HEADLINE_CUTOFFS]),
            use_ray=False,  # a plain call, as bench.accuracy makes it
            recalibrate_days=defaults.RECALIBRATE_DAYS,
        )
    )
    model = result.table["methods"]["model"]["overall"]
    return {
        "best epoch": summary.get("best_epoch"),
        "Dec val/mae": summary["best_metrics"]["val/mae"],
        "Jan MAE/weekly": result.table["mae_ratio_model_vs_naive_weekly"],
        "Jan wQL/weekly": result.table.get("wql_ratio_model_vs_naive_weekly"),
        "Jan COVER80": model.get("coverage_80"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="training config (default: configs/local.yaml, train.py's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--label", default="default", help="names the runs: seeds-<label>-<seed>")
    parser.add_argument("--storage", default=defaults.STORAGE)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cli.setup_logging()
    rows = []
    try:
        for seed in args.seeds:
            run = train(args.config, args.storage, f"seeds-{args.label}-{seed}", seed, args.overrides)
            rows.append({"seed": seed, **score(run)})
    except UserError as err:
        cli.die(str(err))
    columns = [c for c in rows[0] if c != "seed"]
    given = [f"--config {args.config}"] if args.config else []
    print(f"\n{args.label}: " + " ".join(given + [f"--set {o}" for o in args.overrides]))
    print("| seed | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in rows:
        print(f"| {row['seed']} | " + " | ".join(_shown(row[c], c) for c in columns) + " |")
    numeric = [c for c in columns if c != "best epoch" and all(r[c] is not None for r in rows)]
    worst = {c: max(r[c] for r in rows) for c in numeric if c != "Jan COVER80"}  # the higher the worse
    for label, value in (
        ("mean", {c: statistics.fmean(r[c] for r in rows) for c in numeric}),
        ("worst", worst),
        ("spread", {c: max(r[c] for r in rows) - min(r[c] for r in rows) for c in numeric}),
    ):
        print(f"| {label} | " + " | ".join(_shown(value.get(c), c) for c in columns) + " |")


def _shown(value, column: str) -> str:
    if value is None:
        return "-"
    if column == "Jan COVER80":
        return f"{value:.1%}"
    if column == "Dec val/mae":
        return f"{value:,.1f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


if __name__ == "__main__":
    main()
