"""GPU throughput at fleet scale (issue 12): training and backtest windows/s, memory, FLOP/s, a profile.

    python -m bench.gpu --zones 1000 --output $OUT/gpu_bench.json    # on a GPU: the configs/8gpu.yaml model, bf16
    python -m bench.gpu --device cpu --zones 20 --steps 5             # smoke test (tests/bench/test_gpu.py)

Workload: ``--zones`` synthetic half-hourly series (bench.common's fleet on its synthetic city:
a level per zone, shifted daily and weekly cycles, negative-binomial counts), ``--days`` long,
cut into windows by the project's own ``WindowSet``; the model of ``--config`` (default
configs/8gpu.yaml: d_model 128, 3+3 layers, one member). ``python -m bench.make_zones
--synthetic`` writes the same kind of fleet as a file for ``train.py --data``.

Training is **plain Lightning**: one ``L.Trainer`` on one device running
``ForecastModule.training_step`` unchanged (scheduled sampling, per-member clipping, AdamW,
its logging), precision ``bf16-mixed`` on CUDA and ``32-true`` on CPU (``--precision``),
batches from a ``DataLoader`` over the ``WindowSet`` (pinned on CUDA). No Ray and no DDP:
this is one worker's steady state; the all-reduce is estimated in the README. Windows/s are
timed from step ``--warmup`` to the last step, with the device synchronised at both ends.

Also: peak device memory (``torch.cuda.max_memory_allocated``, and ``nvidia-smi``'s
memory.used and utilization.gpu sampled every 0.25 s while timing), FLOPs of one training
step and one forecast batch (``torch.utils.flop_counter.FlopCounterMode``: matrix products
and attention only, so a lower bound) against the device's dense bf16 peak, host
synchronisations per training step (``torch.cuda.set_sync_debug_mode``), backtest
windows/s (48 autoregressive steps per window through ``ForecastModel.forecast``, the path
validation and ``infer.py`` use), and a ``torch.profiler`` summary of a few plain training
steps (top ops by self device time, the share of wall time the device is idle, kernel
launches per step; FLOP count and profile always run eager, also with ``--compile``, whose
windows/s include compiled steps only after the warm-up). The figures go to ``--output``
(default ``$OUT/gpu_bench.json``, else ``out/gpu_bench.json``), and next to it ``gpu_bench.txt``,
``profile.txt`` and ``trace.json.gz``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from bench.common import ROOT, add_output_argument, fleet_matrix, synthetic_city
from lit_forecast import cli
from lit_forecast import config as cfg
from lit_forecast.data.windows import Segment, WindowSet, collate_batch
from lit_forecast.models.factory import hyperparameters, module_from_hyperparameters
from lit_forecast.models.module import ForecastModule
from lit_forecast.spec import SeriesStats, WindowSpec

# Dense (no structured sparsity) bf16 tensor-core peaks in FLOP/s, from NVIDIA's datasheets,
# whose headline figures assume 2:4 sparsity and are halved here: H100 SXM5 1,979 TFLOPS
# sparse -> 989 dense, H100 PCIe 1,513 -> 756, H100 NVL 1,671 -> 835 (H100 Tensor Core GPU
# datasheet); H200 SXM 1,979 -> 989 (H200 datasheet: the H100's compute with more memory);
# A100 312 dense (A100 datasheet); L40S 733 -> 366; L4 242 -> 121. A large bf16 matrix product
# reaches somewhat less than these peaks in practice. The longest name contained in the device's
# name wins.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "A100": 312e12,
    "L40S": 366e12,
    "L4": 121e12,
}
STATS: dict[str, SeriesStats] = {}  # the fleet's scaler statistics (checkpointed with the module)


def peak_flops(device_name: str) -> float | None:
    """Datasheet dense bf16 peak for a device name such as 'NVIDIA H100 80GB HBM3', or None."""
    matches = [key for key in PEAK_BF16_FLOPS if key in device_name]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


# -- the fleet workload ---------------------------------------------------------------------------


def fleet(
    zones: int, days: int, spec: WindowSpec, start: str = "2014-07-01"
) -> tuple[WindowSet, dict[str, SeriesStats]]:
    """Every window of ``zones`` synthetic series of ``days`` days each, and each zone's scaler statistics."""
    slots = days * 48
    if slots < spec.input_window + spec.horizon:
        raise SystemExit(f"--days {days} is too short for {spec.input_window} + {spec.horizon} slot windows")
    values = fleet_matrix(synthetic_city(slots), zones, slots_per_day=48)
    starts = np.arange(spec.input_window, slots - spec.horizon + 1)
    segments = [Segment(f"z{z:05d}", pd.Timestamp(start), values[z], starts) for z in range(zones)]
    stats = {s.series_id: SeriesStats(mean=float(s.values.mean()), std=float(s.values.std()) or 1.0) for s in segments}
    return WindowSet(segments, stats, spec), stats


# -- measuring ------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SmiSampler:
    """Samples nvidia-smi's utilization.gpu (%) and memory.used (MiB) every ``period`` s, if present."""

    def __init__(self, period: float = 0.25):
        self.period, self.samples, self._stop = period, [], threading.Event()
        self.available = shutil.which("nvidia-smi") is not None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "--id=0"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()[0]
                util, mem = (float(x) for x in out.split(","))
                self.samples.append((util, mem))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> SmiSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {"nvidia_smi": "absent" if not self.available else "no samples"}
        utils = [u for u, _ in self.samples]
        return {
            "smi_util_mean_pct": statistics.mean(utils),
            "smi_util_max_pct": max(utils),
            "smi_mem_used_max_mib": max(m for _, m in self.samples),
            "smi_samples": len(utils),
        }


class StepTimer(L.Callback):
    """Times training steps ``warmup`` .. last (device synchronised at both ends) and counts their windows.

    With ``sync_check`` on CUDA it also turns on ``torch.cuda.set_sync_debug_mode('warn')`` for
    the timed steps, so every operation that makes the host wait for the GPU raises a warning
    (counted by the caller); those runs are for the count, not for the speed.
    """

    def __init__(self, warmup: int, sync_check: bool = False):
        self.warmup, self.sync_check = warmup, sync_check
        self.start = self.end = 0.0
        self.windows = self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            sync(pl_module.device)
            self.start = time.perf_counter()
            if self.sync_check:
                torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:  # global_step counts optimiser steps already taken
            self.windows += len(batch["past_target"])
            self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        if self.sync_check:
            torch.cuda.set_sync_debug_mode("default")
        sync(pl_module.device)
        self.end = time.perf_counter()


def new_module(config: cfg.Config, spec: WindowSpec, data: WindowSet, compile_nets: bool) -> ForecastModule:
    """The LightningModule as a training worker builds it (train.compile -> each member compiled in place)."""
    module = module_from_hyperparameters(hyperparameters(config, spec, STATS))
    if compile_nets:  # what lit_forecast.training.ray_train.compile_members does (no Ray import here)
        for net in module.model.nets:
            net.compile()
    return module


def train_lightning(
    config, spec, data, device, batch_size, warmup, steps, precision, compile_nets, scratch, sync_check=False
) -> dict:
    """Steady-state training windows/s of a one-device Lightning Trainer on ``data``."""
    torch.manual_seed(config.train.seed)
    module = new_module(config, spec, data, compile_nets)
    cuda = device.type == "cuda"
    loader = DataLoader(
        data, batch_size=batch_size, shuffle=True, collate_fn=collate_batch, pin_memory=cuda, drop_last=True
    )
    timer = StepTimer(warmup, sync_check=sync_check and cuda)
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision=precision,
        max_steps=warmup + steps,
        gradient_clip_val=config.train.grad_clip,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=10,  # as the workers (ray_train.trainer_arguments)
        logger=TensorBoardLogger(scratch, name="", version=f"b{batch_size}", default_hp_metric=False),
        callbacks=[timer],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    launched = time.perf_counter()
    with SmiSampler() as smi, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, train_dataloaders=loader)
    elapsed = max(timer.end - timer.start, 1e-9)
    result = {
        "batch_size": batch_size,
        "compile": compile_nets,
        "precision": precision,
        "steps_timed": timer.steps,
        "windows_per_s": timer.windows / elapsed,
        "step_ms": 1000 * elapsed / max(1, timer.steps),
        "warmup_s": timer.start - launched,  # trainer setup and the first steps (compilation with --compile)
        "logged": sorted(trainer.callback_metrics),
        **smi.summary(),
    }
    if cuda:
        result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if sync_check and cuda:
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        places: dict[str, int] = {}
        for w in syncs:
            where = f"{os.path.relpath(w.filename, ROOT) if str(ROOT) in w.filename else w.filename}:{w.lineno}"
            places[where] = places.get(where, 0) + 1
        result["host_syncs_per_step"] = len(syncs) / max(1, timer.steps)
        result["host_sync_places"] = dict(sorted(places.items(), key=lambda kv: -kv[1])[:10])
    return result


def plain_step(module: ForecastModule, optimizer, batch: dict, p: float, autocast) -> torch.Tensor:
    """What ``training_step`` computes, without the Trainer: every member's loss, backward, clip, step."""
    with autocast():
        loss = torch.stack([module.member_loss(net, batch, p) for net in module.model.nets]).sum()
    loss.backward()
    module.configure_gradient_clipping(optimizer, module.hparams.train["grad_clip"])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def flops_and_profile(config, spec, data, device, batch_size, precision, out: Path, profile_steps: int) -> dict:
    """FLOPs of one training step and a torch.profiler table over ``profile_steps`` plain steps."""
    torch.manual_seed(config.train.seed)
    module = new_module(config, spec, data, compile_nets=False).to(device).train()
    params = list(module.model.nets.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.train.lr, fused=True if device.type == "cuda" else None)
    bf16 = precision.startswith("bf16")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    p = config.train.sampling_max_prob / 2  # mid-run: the scheduled-sampling pass runs
    loader = iter(
        DataLoader(
            data,
            batch_size=batch_size,
            shuffle=True,
            collate_fn=collate_batch,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )
    )
    for _ in range(3):  # warm-up: cuBLAS handles, allocator
        plain_step(module, optimizer, to_device(next(loader), device), p, autocast)
    counter = FlopCounterMode(display=False)
    with counter:
        plain_step(module, optimizer, to_device(next(loader), device), p, autocast)
    step_flops = counter.get_total_flops()

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(profile_steps):
            plain_step(module, optimizer, to_device(next(loader), device), p, autocast)
        sync(device)
        wall_us = 1e6 * (time.perf_counter() - started)
    averages = prof.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = averages.table(sort_by=sort, row_limit=30)
    device_us = sum(_self_device_us(a) for a in averages)
    launches = sum(a.count for a in averages if "cudaLaunchKernel" in a.key or "cuLaunchKernel" in a.key)
    summary = {
        "profile_steps": profile_steps,
        "profile_batch_size": batch_size,
        "profile_wall_ms_per_step": wall_us / 1000 / profile_steps,
        "device_busy_ms_per_step": device_us / 1000 / profile_steps,
        # wall time not covered by device work: the CPU-side gaps (launch overhead, Python, data)
        "device_idle_share": (1 - device_us / wall_us) if device.type == "cuda" else None,
        "kernel_launches_per_step": launches / profile_steps if device.type == "cuda" else None,
        "train_step_flops": step_flops,
        "train_flops_per_window": step_flops / batch_size,
    }
    text = [
        f"torch.profiler: {profile_steps} plain training steps (ForecastModule.member_loss + backward + clip + AdamW),",
        f"batch {batch_size}, {precision}, {device}. Sorted by {sort} (us).",
        f"wall {summary['profile_wall_ms_per_step']:.2f} ms/step; "
        f"device busy {summary['device_busy_ms_per_step']:.2f} ms/step;"
        f" idle share {summary['device_idle_share']}; kernel launches/step {summary['kernel_launches_per_step']}",
        "",
        table,
    ]
    (out / "profile.txt").write_text("\n".join(text))
    trace = out / "trace.json"
    try:
        prof.export_chrome_trace(str(trace))
        with open(trace, "rb") as src, gzip.open(str(trace) + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    finally:
        trace.unlink(missing_ok=True)
    return summary


def _self_device_us(average) -> float:
    """Device time of a kernel or copy row (us); 0 for CPU-side rows, as the profiler's own total counts."""
    from torch.autograd import DeviceType

    if getattr(average, "device_type", None) != DeviceType.CUDA or getattr(average, "is_user_annotation", False):
        return 0.0
    return float(getattr(average, "self_device_time_total", getattr(average, "self_cuda_time_total", 0.0)))


def backtest(config, spec, data, device, batch_size, bf16: bool, windows: int, repeats: int) -> dict:
    """Windows/s of autoregressive 48-step forecasts (``ForecastModel.forecast``) over the fleet's last windows."""
    torch.manual_seed(config.train.seed)
    module = new_module(config, spec, data, compile_nets=False).to(device).eval()
    n = min(windows, len(data))
    index = torch.arange(len(data) - n, len(data))  # the latest windows of the last zones: a backtest's cutoffs
    batches = [to_device(data.batch(index[lo : lo + batch_size]), device) for lo in range(0, n, batch_size)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        module.model.forecast(batches[0])  # warm-up
        counter = FlopCounterMode(display=False)
        with counter:
            module.model.forecast(batches[0])
        flops_per_window = counter.get_total_flops() / len(batches[0]["past_target"])
        times = []
        for _ in range(repeats):
            sync(device)
            started = time.perf_counter()
            for batch in batches:
                module.model.forecast(batch)
            sync(device)
            times.append(time.perf_counter() - started)
    best = statistics.median(times)
    return {
        "windows": n,
        "batch_size": batch_size,
        "precision": "bf16" if bf16 else "fp32",
        "seconds": best,
        "windows_per_s": n / best,
        "forecast_flops_per_window": flops_per_window,
        "achieved_flops": flops_per_window * n / best,
    }


# -- the report -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default=str(ROOT / "configs" / "8gpu.yaml"), help="model shape and training settings"
    )
    parser.add_argument("--set", action="append", default=[], help="config override (key=value), repeatable")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--zones", type=int, default=1000, help="synthetic series in the fleet")
    parser.add_argument("--days", type=int, default=14, help="days per zone (windows per zone: days x 48 - 383)")
    parser.add_argument(
        "--batch-sizes", default=None, help="per-device training batch sizes, comma-separated (default: the config's)"
    )
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per batch size")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 20 on CUDA, 2 on CPU)")
    parser.add_argument(
        "--precision", default=None, help="Lightning precision (default bf16-mixed on CUDA, 32-true on CPU)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="train.compile: torch.compile each member (also --set train.compile=true)",
    )
    parser.add_argument(
        "--sync-check-steps", type=int, default=None, help="steps counted under set_sync_debug_mode (CUDA; default 10)"
    )
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=None,
        help="plain steps under torch.profiler (default 10 on CUDA, 1 on CPU)",
    )
    parser.add_argument(
        "--infer-windows", type=int, default=None, help="backtest windows (default 20,000 on CUDA, 32 on CPU)"
    )
    parser.add_argument(
        "--infer-batch", type=int, default=None, help="windows per forecast batch (default 4,096 on CUDA, 32 on CPU)"
    )
    parser.add_argument(
        "--infer-precision", default=None, help="comma-separated of fp32,bf16 (default both on CUDA, fp32 on CPU)"
    )
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-infer", action="store_true")
    add_output_argument(
        parser,
        "the figures as JSON; gpu_bench.txt, profile.txt and trace.json.gz go next to it "
        "(default $OUT/gpu_bench.json, else out/gpu_bench.json)",
    )
    args = parser.parse_args()
    cli.quiet_third_parties()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no GPU (use --device cpu for the smoke test)")
    config = cfg.load(args.config, [*args.set, *(["train.compile=true"] if args.compile else [])])
    compile_nets = config.train.compile
    d = config.data
    spec = WindowSpec(d.input_window, d.horizon, d.freq, d.stride, d.eval_stride)
    precision = args.precision or ("bf16-mixed" if cuda else "32-true")
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 2)
    batch_sizes = [int(b) for b in (args.batch_sizes or str(config.train.batch_size)).split(",")]
    output = Path(args.output or Path(os.environ.get("OUT") or "out", "gpu_bench.json"))
    out = output.parent
    out.mkdir(parents=True, exist_ok=True)
    cpu = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    name = torch.cuda.get_device_name(device) if cuda else cpu
    peak = peak_flops(name) if cuda else None

    started = time.perf_counter()
    data, stats = fleet(args.zones, args.days, spec)
    STATS.update(stats)
    report: dict = {
        "device": name,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "config": args.config,
        "overrides": args.set,
        "model": {k: v for k, v in cfg.to_dict(config)["model"].items()},
        "zones": args.zones,
        "days": args.days,
        "fleet_windows": len(data),
        "fleet_build_s": time.perf_counter() - started,
        "peak_bf16_flops_datasheet": peak,
        "train": [],
        "infer": [],
    }
    probe = new_module(config, spec, data, compile_nets=False)
    report["parameters"] = sum(p.numel() for p in probe.model.nets.parameters())
    del probe
    lines = [
        f"device   {name}; torch {torch.__version__}, lightning {L.__version__}",
        f"model    {args.config} {' '.join(args.set)}: {report['parameters']:,} parameters, {config.model.members} "
        "member(s)",
        f"fleet    {args.zones} synthetic zones x {args.days} days -> {len(data):,} windows "
        f"({report['fleet_build_s']:.1f} s to build)",
    ]
    print("\n".join(lines), flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as scratch:
        if not args.skip_train:
            for batch_size in batch_sizes:
                result = train_lightning(
                    config, spec, data, device, batch_size, warmup, args.steps, precision, compile_nets, scratch
                )
                report["train"].append(result)
                print(
                    f"train    batch {batch_size}: {result['windows_per_s']:,.0f} windows/s ({result['step_ms']:.2f} "
                    "ms/step)",
                    flush=True,
                )
            if cuda:
                check = args.sync_check_steps or 10
                result = train_lightning(
                    config,
                    spec,
                    data,
                    device,
                    batch_sizes[0],
                    warmup,
                    check,
                    precision,
                    compile_nets,
                    scratch,
                    sync_check=True,
                )
                report["sync_check"] = {
                    k: result[k] for k in ("batch_size", "steps_timed", "host_syncs_per_step", "host_sync_places")
                }
            profile_steps = args.profile_steps or (10 if cuda else 1)
            report["profile"] = flops_and_profile(
                config, spec, data, device, batch_sizes[0], precision, out, profile_steps
            )
            per_window = report["profile"]["train_flops_per_window"]
            for result in report["train"]:
                result["achieved_flops"] = per_window * result["windows_per_s"]
                result["share_of_peak"] = result["achieved_flops"] / peak if peak else None
        if not args.skip_infer:
            precisions = (args.infer_precision or ("fp32,bf16" if cuda else "fp32")).split(",")
            windows = args.infer_windows or (20_000 if cuda else 32)
            infer_batch = args.infer_batch or (4096 if cuda else 32)
            for p in precisions:
                result = backtest(
                    config, spec, data, device, infer_batch, p == "bf16", windows, repeats=3 if cuda else 1
                )
                result["share_of_peak"] = result["achieved_flops"] / peak if peak else None
                report["infer"].append(result)
                print(f"infer    {p}: {result['windows_per_s']:,.0f} windows/s", flush=True)

    lines += ["", "training (plain Lightning, one device; windows/s over steps after the warm-up):"]
    for r in report["train"]:
        mem = f"  max allocated {r['max_memory_allocated_gib']:.2f} GiB" if "max_memory_allocated_gib" in r else ""
        smi = (
            f"  nvidia-smi util {r['smi_util_mean_pct']:.0f}% (max {r['smi_util_max_pct']:.0f}), "
            f"mem {r['smi_mem_used_max_mib']:.0f} MiB"
            if "smi_util_mean_pct" in r
            else ""
        )
        share = (
            f" = {100 * r['share_of_peak']:.2f}% of {peak / 1e12:.0f} TFLOP/s"
            if r.get("share_of_peak") is not None
            else ""
        )
        flops = f"  {r['achieved_flops'] / 1e12:.3f} TFLOP/s{share}" if "achieved_flops" in r else ""
        lines.append(
            f"  batch {r['batch_size']:>5} {r['precision']}{' compiled' if r['compile'] else ''}: "
            f"{r['windows_per_s']:>10,.0f} windows/s"
            f"  {r['step_ms']:7.2f} ms/step  (warm-up {r['warmup_s']:.1f} s){mem}{smi}{flops}"
        )
    if "sync_check" in report:
        s = report["sync_check"]
        lines.append(
            f"  host synchronisations per training step (Lightning, batch {s['batch_size']}): "
            f"{s['host_syncs_per_step']:.1f}"
        )
        lines += [f"      {n:4d} x {where}" for where, n in s["host_sync_places"].items()]
    if "profile" in report:
        p = report["profile"]
        lines += [
            "  FLOPs per training window (FlopCounterMode, fwd + bwd + scheduled-sampling pass): "
            f"{p['train_flops_per_window'] / 1e6:.1f} MFLOP",
            f"  profile (plain eager steps, batch {p['profile_batch_size']}): "
            f"wall {p['profile_wall_ms_per_step']:.2f} ms/step, "
            f"device busy {p['device_busy_ms_per_step']:.2f} ms/step, idle share {p['device_idle_share']}, "
            f"kernel launches/step {p['kernel_launches_per_step']}  (profile.txt)",
        ]
    if report["infer"]:
        lines += ["", "backtest (ForecastModel.forecast, 48 autoregressive steps per window, KV cache):"]
        for r in report["infer"]:
            share = f" = {100 * r['share_of_peak']:.3f}% of peak" if r.get("share_of_peak") is not None else ""
            lines.append(
                f"  {r['precision']:>4}, batch {r['batch_size']}: {r['windows']:,} windows in {r['seconds']:.3f} s = "
                f"{r['windows_per_s']:>10,.0f} windows/s"
                f"  ({r['forecast_flops_per_window'] / 1e6:.1f} MFLOP/window, {r['achieved_flops'] / 1e12:.3f} "
                f"TFLOP/s{share})"
            )
    if peak:
        lines.append(f"\npeak: {peak / 1e12:.0f} TFLOP/s dense bf16 (datasheet)")
    text = "\n".join(lines)
    (out / "gpu_bench.txt").write_text(text + "\n")
    output.write_text(json.dumps(report, indent=1, default=str))
    print("\n" + text)
    print(f"\nwrote {output}, {out}/gpu_bench.txt{', profile.txt, trace.json.gz' if 'profile' in report else ''}")


if __name__ == "__main__":
    main()
