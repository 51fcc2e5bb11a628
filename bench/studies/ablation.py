"""Which model options help? Validation MAE of model variants trained alike, without Ray.

    python -m bench.studies.ablation --data nyc_taxi.csv             # every variant, configs/local.yaml
    python -m bench.studies.ablation --variants full no_covariates --epochs 3
    python -m bench.studies.ablation --epochs 1 --set train.limit_train_batches=2   # smoke run

Each variant is configs/local.yaml (or --config) plus a few overrides, trained in this process
by a plain Lightning Trainer on one device with the same seed, epochs and batch size. The batch
defaults to the config's global batch (train.batch_size x cluster.num_workers), so the
optimiser takes the steps the Ray run takes. Figures are on the validation split (December
2014 by default); one seed, so differences of ~50 passengers are within epoch-to-epoch noise:

    val/mae    autoregressive forecast MAE in passengers (best epoch, and final)
    val/loss   autoregressive loss in scaled units; val/loss_tf the teacher-forced loss
    naive      seasonal-naive MAE on the same windows: the value one week (336 slots) earlier,
               or one day (48) earlier where input_window < 336 (marked 'daily')
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

import lightning as L
import torch

from bench.common import add_data_argument
from lit_forecast import cli
from lit_forecast import config as cfg
from lit_forecast.data.datamodule import ShardDataModule
from lit_forecast.data.prepare import prepare
from lit_forecast.errors import UserError
from lit_forecast.models.factory import module_from_config
from lit_forecast.training.callbacks import Throughput

VARIANTS = {
    "full": [],
    "no_covariates": ["model.covariates=false"],
    "no_seasonal_lag": ["model.seasonal_lag=0"],
    "window_norm": ["model.window_norm=true"],
    "holidays": ["model.holidays=true"],
    "no_scheduled_sampling": ["train.sampling_max_prob=0"],
    "mae_loss": ["model.quantiles=[]", "train.loss=mae"],  # a point forecast trained on the metric itself
    "point": ["model.quantiles=[]"],  # one value per step, train.loss (smooth L1), no quantile head
    "no_daily_lag": ["model.daily_lag=0"],  # without the same slot yesterday as a known input
    "residual": ["model.residual=true"],  # predict the correction to last week's value
    # The reference tutorial's setup (one token per step, a 3.5-day window, nothing but the
    # series itself), with our causal decoder mask.
    "tutorial_univariate": [
        "model.covariates=false",
        "model.seasonal_lag=0",
        "model.patch_len=1",
        "data.input_window=168",
        "train.sampling_max_prob=0",
    ],
}


class Recorder(L.Callback):
    """Validation metrics and wall time of every epoch."""

    def __init__(self):
        self.epochs: list[dict] = []
        self.start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        m = {k: v.item() for k, v in trainer.callback_metrics.items()}
        m["seconds"] = time.perf_counter() - self.start
        self.epochs.append(m)
        print(
            f"  epoch {len(self.epochs)}  val/mae {m['val/mae']:.0f}  val/loss {m['val/loss']:.4f}  "
            f"val/loss_tf {m['val/loss_tf']:.4f}  "
            + (
                f"val/wql {m['val/wql']:.4f}  val/coverage_80 {m['val/coverage_80']:.3f}  "
                if "val/coverage_80" in m
                else ""
            )
            + f"{m.get('train/windows_per_s', 0):.0f} windows/s  ({m['seconds']:.1f} s)",
            flush=True,
        )


def seasonal_naive_mae(datamodule: ShardDataModule) -> tuple[float, int]:
    """MAE (passengers) of the weekly seasonal-naive forecast on the validation windows, and its lag.

    The forecast for future step k is past[:, W - lag + k]; the lag is a week if the window
    holds one, else a day.
    """
    w = datamodule.manifest.window
    W, H, day = w.input_window, w.horizon, w.slots_per_day
    lag = 7 * day if W >= 7 * day else day
    total, count = 0.0, 0
    for batch in datamodule.val_dataloader():
        scale, loc = batch["scale"][:, None], batch["loc"][:, None]
        naive = batch["past_target"][:, W - lag : W - lag + H] * scale + loc  # (B, H) passengers
        actual = batch["future_target"] * scale + loc
        total += (naive - actual).abs().double().sum().item()
        count += actual.numel()
    return total / count, lag


def run_variant(config: cfg.Config, folder: str, batch_size: int, precision: str) -> dict:
    """Train one variant; returns its per-epoch metrics and the seasonal-naive baseline."""
    prepare(config, folder, num_shards=1)
    datamodule = ShardDataModule(folder, batch_size)
    datamodule.setup("fit")  # no trainer: rank 0 of 1
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    manifest = datamodule.manifest
    module = module_from_config(config, manifest)
    recorder = Recorder()
    trainer = L.Trainer(
        max_epochs=config.train.max_epochs,
        accelerator="auto",
        devices=1,
        precision=precision,
        gradient_clip_val=config.train.grad_clip,
        limit_train_batches=config.train.limit_train_batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Throughput(), recorder],  # Throughput logs train/windows_per_s
    )
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader(), val_dataloaders=datamodule.val_dataloader())
    naive, lag = seasonal_naive_mae(datamodule)
    return {
        "epochs": recorder.epochs,
        "naive": naive,
        "lag": lag,
        "params": sum(p.numel() for p in module.model.nets.parameters()),
        "windows": (len(datamodule.datasets["train"]), len(datamodule.datasets["val"])),
    }


def format_table(results: dict[str, dict]) -> str:
    """One row per variant."""
    header = (
        f"{'variant':<22} {'params':>7} {'best val/mae':>15} {'final val/mae':>13} {'val/loss':>9} "
        f"{'val/loss_tf':>11} {'naive MAE':>15} {'best/naive':>10} {'s/epoch':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        epochs = r["epochs"]
        best = min(range(len(epochs)), key=lambda i: epochs[i]["val/mae"])
        final = epochs[-1]
        naive = f"{r['naive']:.0f} ({'weekly' if r['lag'] == 336 else 'daily'})"
        seconds = sum(e["seconds"] for e in epochs) / len(epochs)
        lines.append(
            f"{name:<22} {r['params']:>7,} {epochs[best]['val/mae']:>9.0f} (ep {best + 1:>2}) "
            f"{final['val/mae']:>13.0f} "
            f"{final['val/loss']:>9.4f} {final['val/loss_tf']:>11.4f} {naive:>15} "
            f"{epochs[best]['val/mae'] / r['naive']:>10.3f} {seconds:>8.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: configs/local.yaml)")
    add_data_argument(parser, "CSV or Parquet to use instead of data.source")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        metavar="NAME",
        help=f"variants to train (default: all of {', '.join(VARIANTS)})",
    )
    parser.add_argument("--epochs", type=int, help="epochs per variant (default: the config's train.max_epochs)")
    parser.add_argument(
        "--batch-size", type=int, help="windows per step (default: train.batch_size x cluster.num_workers)"
    )
    parser.add_argument(
        "--precision", help="Lightning precision (default: train.precision; auto = bf16-mixed on GPU, else 32-true)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant (repeatable)"
    )
    args = parser.parse_args()
    cli.setup_logging()
    # Other data than the NAB file: no checksum to expect (as train.py --data does).
    base = list(args.set) + ([f"data.source={args.data}", "data.sha256=null"] if args.data else [])
    base += [f"train.max_epochs={args.epochs}"] if args.epochs else []
    try:
        configs = {name: cfg.load(args.config, base + VARIANTS[name]) for name in args.variants}
    except UserError as err:
        cli.die(str(err))
    first = next(iter(configs.values()))
    batch_size = args.batch_size or first.train.batch_size * first.cluster.max_workers
    precision = args.precision or first.train.precision
    if precision == "auto":
        precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"command    python {shlex.join(sys.argv)}")
    print(
        f"device     {device}, precision {precision}, batch {batch_size}, {first.train.max_epochs} epochs, "
        f"seed {first.train.seed}"
    )

    results = {}
    with tempfile.TemporaryDirectory(prefix="ablation-") as tmp:
        for name, config in configs.items():
            print(f"{name}: {' '.join(VARIANTS[name]) or '(config as is)'}", flush=True)
            try:
                results[name] = run_variant(config, os.path.join(tmp, name), batch_size, precision)
            except UserError as err:  # e.g. the data file cannot be read
                cli.die(str(err))
    train_windows, val_windows = results[next(iter(results))]["windows"]
    print()
    print(
        f"validation: {val_windows} windows; training: {train_windows} windows "
        f"(val/loss, val/loss_tf: final epoch, scaled units; best/naive: best val/mae over naive MAE)"
    )
    print(format_table(results))


if __name__ == "__main__":
    main()
