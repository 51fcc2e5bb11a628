"""Training benchmark on this machine, in one run. Prints figures; asserts nothing.

    python -m bench.training                 # the local default config on the real data
    python -m bench.training --skip-kill     # without the killed-worker recovery run

1. The full local default run, ``python train.py`` as a user runs it (prepare + train + best
   checkpoint), in a fresh run folder: wall time, Ray start-up, time to the first training
   step, steady-state epoch time and training windows/s (epochs 2+), peak memory of the whole
   process tree.
2. The same model and global batch in a plain single-process PyTorch loop (no Lightning, no
   Ray, all cores): steady-state windows/s, for the Ray/plain ratio (target >= 0.9).
3. A short run whose training worker is SIGKILLed after its first checkpoint: seconds from
   the kill to the first step of the restarted worker group.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time

import torch

from bench.common import TrainRun
from lit_forecast import cli
from lit_forecast import config as cfg
from lit_forecast.data.datamodule import ShardDataModule
from lit_forecast.data.prepare import prepare
from lit_forecast.errors import UserError
from lit_forecast.models.factory import module_from_config


def full_run(storage: str, extra: list[str]) -> dict:
    run = TrainRun(["--storage", storage, "--name", "bench", *extra])
    wall = run.wait(timeout=1800)
    ray_start = run.first(r"started a local Ray .* in ([\d.]+) s")
    first_step = run.first(r"first training step done, ([\d.]+) s after launch")
    rates = [float(m) for _, line in run.lines for m in re.findall(r"train/windows_per_s (\d+)", line)]
    # Epoch lines end in "(T s training)": the training part alone (Throughput callback).
    epoch_lines = [
        (t, line) for t, line in run.lines if re.search(r"\bepoch \d+/\d+(  |$)", line)
    ]  # EpochLine's, not "RESUMED ..."
    training = [float(m) for _, line in epoch_lines for m in re.findall(r"\(([\d.]+) s training\)", line)]
    # The whole epoch (training, validation, report and checkpoint): between consecutive epoch lines.
    arrivals = [t for t, _ in epoch_lines]
    whole = [b - a for a, b in zip(arrivals, arrivals[1:])]
    best = run.first(r"metrics\s+val/mae (\S+)")
    return {
        "wall_s": wall,
        "ray_start_s": float(ray_start[1].group(1)) if ray_start else float("nan"),
        "first_step_s": float(first_step[1].group(1)) if first_step else float("nan"),
        "steady_windows_per_s": _mean(rates[1:]),
        "epoch_s": _mean(whole),  # epochs 2+
        "epoch_train_s": _mean(training[1:]),
        "epochs": len(epoch_lines),
        "peak_rss_gib": run.memory.peak_total / 2**30,
        "best_val_mae": best[1].group(1) if best else "?",
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def plain_loop(storage: str, overrides: list[str], steps: int) -> float:
    """Windows/s of a plain PyTorch loop: same model, same global batch, same scheduled sampling."""
    config = cfg.load(None, overrides)
    data_dir = os.path.join(storage, "plain-data")
    manifest = prepare(config, data_dir, num_shards=1)
    datamodule = ShardDataModule(data_dir, config.train.batch_size * config.cluster.max_workers)
    datamodule.setup("fit")
    module = module_from_config(config, manifest).train()
    optimizer = torch.optim.AdamW(module.model.nets.parameters(), lr=config.train.lr)
    torch.set_num_threads(os.cpu_count() or 1)
    seen, timed_from, done = 0, None, 0
    while done < steps:
        for batch in datamodule.train_dataloader():
            if done == 10:  # warm-up steps excluded
                timed_from, seen = time.perf_counter(), 0
            # Scheduled sampling at p = 0.25, as mid-run in training; every ensemble member.
            loss = sum(module.member_loss(net, batch, 0.25) for net in module.model.nets)
            optimizer.zero_grad()
            loss.backward()
            module.configure_gradient_clipping(optimizer, config.train.grad_clip)
            optimizer.step()
            seen += len(batch["past_target"])
            done += 1
            if done >= steps:
                break
    return seen / (time.perf_counter() - timed_from)


def recovery(storage: str, extra: list[str]) -> float:
    """Seconds from SIGKILL of a training worker to the restarted group's first step."""
    run = TrainRun(["--storage", storage, "--name", "bench-kill", "--set", "train.max_epochs=3", *extra])
    run.wait_for_first_checkpoint(timeout=900)
    workers, killed_at = run.kill_a_worker()
    if not workers:
        run.stop()
        raise SystemExit("no ray::RayTrainWorker process found under train.py to kill")
    run.wait(timeout=900)
    resumed = run.first(r"first training step done", after=killed_at)
    return resumed[0] - killed_at if resumed else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], help="config override for every run (key=value)")
    parser.add_argument("--plain-steps", type=int, default=60)
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument("--storage", help="keep the runs in this folder (default: a temporary one)")
    args = parser.parse_args()
    extra = [a for kv in args.set for a in ("--set", kv)]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lit-bench-") as scratch:
        storage = args.storage or scratch
        print(
            f"machine: {os.cpu_count()} CPUs, load average {load:.2f} at start; torch {torch.__version__}", flush=True
        )
        full = full_run(storage, extra)
        try:
            plain = plain_loop(storage, args.set, args.plain_steps)
        except UserError as err:
            cli.die(str(err))
        kill = float("nan") if args.skip_kill else recovery(storage, extra)
    print()
    print(
        f"full local default run (python train.py): {full['wall_s']:.0f} s wall, {full['epochs']} epochs, best "
        f"val/mae {full['best_val_mae']}"
    )
    print(f"  Ray start-up                         {full['ray_start_s']:.1f} s")
    print(f"  launch -> first training step        {full['first_step_s']:.1f} s")
    print(f"  steady-state epoch (train + val)     {full['epoch_s']:.1f} s  ({full['epoch_train_s']:.1f} s training)")
    print(f"  steady-state training, Ray 2 workers {full['steady_windows_per_s']:.0f} windows/s")
    print(
        f"  plain PyTorch loop, same batch       {plain:.0f} windows/s  -> Ray/plain = "
        f"{full['steady_windows_per_s'] / plain:.2f}"
    )
    print(f"  peak memory of the process tree      {full['peak_rss_gib']:.2f} GiB")
    print(f"  killed worker -> first step again    {kill:.1f} s")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
