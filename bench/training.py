"""Training benchmark on this machine, in one run. Prints figures; asserts nothing.

    python bench/training.py                 # the local default config on the real data
    python bench/training.py --skip-kill     # without the killed-worker recovery run

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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil  # requirements-dev.txt
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_forecast import cli, layout  # noqa: E402
from lit_forecast import config as cfg  # noqa: E402
from lit_forecast.data.datamodule import ShardDataModule  # noqa: E402
from lit_forecast.data.prepare import prepare  # noqa: E402
from lit_forecast.errors import UserError  # noqa: E402
from lit_forecast.models.factory import module_from_config  # noqa: E402


def _tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def process_tree_rss(pid: int) -> int:
    """Resident memory (bytes) of ``pid`` and all its descendants."""
    total = 0
    for proc in _tree(pid):
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # ended between listing and reading
    return total


class Watched:
    """A train.py subprocess whose output lines are timestamped on arrival and memory sampled."""

    def __init__(self, args: list[str]):
        self.started = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[tuple[float, str]] = []
        self.peak_rss = 0
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip()))

    def _sample(self) -> None:
        while self.proc.poll() is None:
            self.peak_rss = max(self.peak_rss, process_tree_rss(self.proc.pid))
            time.sleep(0.5)

    def wait(self, timeout: float) -> float:
        self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # let the reader drain
        if self.proc.returncode:
            print("\n".join(line for _, line in self.lines[-40:]))
            raise SystemExit(f"train.py failed with exit code {self.proc.returncode}")
        return time.monotonic() - self.started

    def first(self, pattern: str, after: float = 0.0) -> tuple[float, re.Match] | None:
        for t, line in list(self.lines):
            if t >= after and (m := re.search(pattern, line)):
                return t, m
        return None


def full_run(storage: str, extra: list[str]) -> dict:
    run = Watched(["--storage", storage, "--name", "bench", *extra])
    wall = run.wait(timeout=1800)
    ray_start = run.first(r"started a local Ray .* in ([\d.]+) s")
    first_step = run.first(r"first training step done, ([\d.]+) s after launch")
    rates = [float(m) for _, line in run.lines for m in re.findall(r"train/windows_per_s (\d+)", line)]
    # Epoch lines end in "(T s training)": the training part alone (Throughput callback).
    epoch_lines = [(t, line) for t, line in run.lines if re.search(r"\bepoch \d+/\d+(  |$)", line)]  # EpochLine's, not "RESUMED ..."
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
        "peak_rss_gib": run.peak_rss / 2**30,
        "best_val_mae": best[1].group(1) if best else "?",
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def plain_loop(storage: str, overrides: list[str], steps: int) -> float:
    """Windows/s of a plain PyTorch loop: same model, same global batch, same scheduled sampling."""
    config = cfg.load(None, overrides)
    data_dir = os.path.join(storage, "plain-data")
    manifest = prepare(config, data_dir, num_shards=1)
    datamodule = ShardDataModule(data_dir, config.train.batch_size * config.cluster.num_workers)
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
    run = Watched(["--storage", storage, "--name", "bench-kill", "--set", "train.max_epochs=3", *extra])
    snapshot = Path(storage, "bench-kill", layout.RAY_SNAPSHOT_FILE)
    while not (snapshot.is_file() and layout.CHECKPOINT_PREFIX in snapshot.read_text()):
        if run.proc.poll() is not None:
            raise SystemExit("the run ended before its first checkpoint")
        time.sleep(0.1)
    workers = [p.pid for p in _tree(run.proc.pid)[1:] if _cmdline(p).startswith("ray::RayTrainWorker")]
    if not workers:
        raise SystemExit("no ray::RayTrainWorker process found under train.py to kill")
    killed_at = time.monotonic() - run.started
    os.kill(workers[-1], signal.SIGKILL)
    run.wait(timeout=900)
    resumed = run.first(r"first training step done", after=killed_at)
    return resumed[0] - killed_at if resumed else float("nan")


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


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
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f} at start; torch {torch.__version__}", flush=True)
        full = full_run(storage, extra)
        try:
            plain = plain_loop(storage, args.set, args.plain_steps)
        except UserError as err:
            cli.die(str(err))
        kill = float("nan") if args.skip_kill else recovery(storage, extra)
    print()
    print(f"full local default run (python train.py): {full['wall_s']:.0f} s wall, {full['epochs']} epochs, best val/mae {full['best_val_mae']}")
    print(f"  Ray start-up                         {full['ray_start_s']:.1f} s")
    print(f"  launch -> first training step        {full['first_step_s']:.1f} s")
    print(f"  steady-state epoch (train + val)     {full['epoch_s']:.1f} s  ({full['epoch_train_s']:.1f} s training)")
    print(f"  steady-state training, Ray 2 workers {full['steady_windows_per_s']:.0f} windows/s")
    print(f"  plain PyTorch loop, same batch       {plain:.0f} windows/s  -> Ray/plain = {full['steady_windows_per_s'] / plain:.2f}")
    print(f"  peak memory of the process tree      {full['peak_rss_gib']:.2f} GiB")
    print(f"  killed worker -> first step again    {kill:.1f} s")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
