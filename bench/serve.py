"""Online forecasts (infer.py --serve): start time, latency, throughput under concurrent clients, a model update.

    python -m bench.serve                           # configs/local.yaml model, random weights (the same arithmetic)
    python -m bench.serve --checkpoint runs/nyc_taxi_local/checkpoint_000009 --duration 20

Measures, on a local Ray of --cpus CPUs (clients run in this process, on the same machine):
  - start: ``python infer.py --serve`` from the command line until GET /healthz answers;
  - single-client latency p50/p99 of POST /forecast over HTTP (one keep-alive connection) and
    through a deployment handle;
  - throughput and p99 at 1, 8 and 32 concurrent HTTP clients, with the batch sizes the replica decoded;
  - failed requests while a second checkpoint is deployed under 8 clients, and back.
Targets (issue 21, 2 cores, nothing else running): p50 <= 10 ms through a handle and <= 20 ms
over HTTP, p99 <= 50 ms over HTTP, >= 500 forecasts/s at 32 clients, 0 failed requests across
an update, start within 15 s. The load average is printed with the figures: on a shared
machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray
import torch
from ray import serve

from bench.inference import random_checkpoint  # the local config's model, random weights
from lit_forecast import cli
from lit_forecast.config import ServeConfig
from lit_forecast.serving.app import QUIET, deploy, stop_serve

ROOT = Path(__file__).resolve().parent.parent


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bodies(count: int, input_window: int, seed: int = 0) -> list[bytes]:
    """``count`` request bodies: a week of taxi-like half-hours each, ending at different slots."""
    rng = np.random.default_rng(seed)
    t = np.arange(input_window + 48 * 7)
    values = 15000 + 7000 * np.sin(2 * np.pi * t / 48) + rng.normal(0, 500, len(t))
    out = []
    for i in range(count):
        end = np.datetime64("2015-01-05T00:00") + np.timedelta64(30 * (input_window - 1 + i % 336), "m")
        window = values[i % 336 : i % 336 + input_window]
        out.append(json.dumps({"series_id": "0", "history": window.round().tolist(), "history_end": str(end)}).encode())
    return out


class Client:
    """One keep-alive HTTP connection; ``post`` returns (status, seconds)."""

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: bytes) -> tuple[int, float]:
        started = time.perf_counter()
        try:
            self.connection.request("POST", path, body, {"Content-Type": "application/json"})
            answer = self.connection.getresponse()
            answer.read()
            status = answer.status
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            status = 0
        return status, time.perf_counter() - started

    def get(self, path: str) -> dict:
        self.connection.request("GET", path)
        return json.loads(self.connection.getresponse().read())


def percentiles(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):6.1f} ms  p99 {np.percentile(ms, 99):6.1f} ms  (n={len(ms)})"


def load_test(port: int, payloads: list[bytes], clients: int, duration: float) -> dict:
    """``clients`` threads posting for ``duration`` s: completed, failed, latencies."""
    stop = threading.Event()
    latencies, statuses = [], collections.Counter()
    lock = threading.Lock()

    def run(k: int) -> None:
        client, i = Client(port), k
        while not stop.is_set():
            status, seconds = client.post("/forecast", payloads[i % len(payloads)])
            i += clients
            with lock:
                statuses[status] += 1
                if status == 200:
                    latencies.append(seconds)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(duration)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "ok": statuses[200],
        "failed": sum(statuses.values()) - statuses[200],
        "seconds": elapsed,
        "latencies": latencies,
    }


def batch_sizes(before: dict, after: dict) -> str:
    """Mean and largest batch decoded between two GET /stats answers."""
    counts = collections.Counter({int(k): v for k, v in after["batch_sizes"].items()})
    counts.subtract({int(k): v for k, v in before["batch_sizes"].items()})
    batches = sum(v for v in counts.values() if v > 0)
    forecasts = sum(k * v for k, v in counts.items() if v > 0)
    largest = max((k for k, v in counts.items() if v > 0), default=0)
    return f"batches: mean {forecasts / max(batches, 1):.1f}, largest {largest}"


def start_time(checkpoint: str, timeout: float = 120) -> float:
    """Seconds from ``python infer.py --serve`` to the first GET /healthz answered; the server is then stopped."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "infer.py"), "--serve", "--checkpoint", checkpoint, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    ready = None
    try:
        while time.perf_counter() - started < timeout and server.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    ready = time.perf_counter() - started
                    break
            except OSError:
                time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    if ready is None:
        raise SystemExit(f"the server did not answer within {timeout:g} s: {server.stderr.read().decode()[-2000:]}")
    return ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained checkpoint (default: the local config's model, random weights)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per latency figure")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each concurrent run")
    parser.add_argument("--skip-start", action="store_true", help="do not time infer.py --serve from the command line")
    args = parser.parse_args()
    cli.quiet_third_parties()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    folder = tempfile.TemporaryDirectory(prefix="bench_serve_")
    first = args.checkpoint or random_checkpoint(folder.name)
    second = os.path.join(folder.name, "update", "checkpoint.ckpt")  # the same weights a little changed: a new model
    os.makedirs(os.path.dirname(second))
    raw = torch.load(first if first.endswith(".ckpt") else os.path.join(first, "checkpoint.ckpt"), weights_only=True)
    raw["state_dict"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in raw["state_dict"].items()}
    torch.save(raw, second)
    input_window = raw["hyper_parameters"]["window"]["input_window"]
    print(f"model: {first}  (input_window {input_window}, horizon {raw['hyper_parameters']['window']['horizon']})")
    print(load())

    if not args.skip_start:
        print(f"start: python infer.py --serve until GET /healthz answers: {start_time(first):.1f} s   ({load()})")

    settings = ServeConfig(
        port=free_port(),
        replicas=args.replicas,
        cpus_per_replica=args.replica_cpus,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_ongoing_requests=max(4 * args.max_batch_size, 64),
    )
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port}, logging_config=QUIET)
        handle = deploy(settings, first)
        print(
            f"serving {args.replicas} replica(s) x {args.replica_cpus:g} CPU, batches up to {args.max_batch_size}, "
            f"wait {args.batch_wait_ms:g} ms"
        )
        payloads = bodies(512, input_window)
        client = Client(settings.port)
        for body in payloads[:20]:  # warm up: first batches, torch's first calls
            client.post("/forecast", body)

        http_times = [client.post("/forecast", payloads[i % len(payloads)])[1] for i in range(args.requests)]
        print(f"one client, HTTP:    {percentiles(http_times)}")
        decoded = [json.loads(b) for b in payloads]
        handle_times = []
        for i in range(args.requests):
            started = time.perf_counter()
            answer = handle.forecast.remote(decoded[i % len(decoded)]).result(timeout_s=60)
            handle_times.append(time.perf_counter() - started)
            assert "median" in answer, answer
        print(f"one client, handle:  {percentiles(handle_times)}")

        for clients in (1, 8, 32):
            before = client.get("/stats")
            result = load_test(settings.port, payloads, clients, args.duration)
            after = client.get("/stats")
            print(
                f"{clients:2d} clients: {result['ok'] / result['seconds']:7.1f} forecasts/s  "
                f"{percentiles(result['latencies'])}  failed {result['failed']}  {batch_sizes(before, after)}  "
                f"({load()})"
            )

        results = {}  # 8 clients through both updates: to the second checkpoint and back
        during = threading.Thread(target=lambda: results.update(load_test(settings.port, payloads, 8, args.duration)))
        during.start()
        time.sleep(args.duration / 4)
        started = time.perf_counter()
        deploy(settings, second)
        deployed = time.perf_counter() - started
        while client.get("/model")["checkpoint"] != second and time.perf_counter() - started < 120:
            time.sleep(0.05)
        swapped = time.perf_counter() - started
        time.sleep(args.duration / 4)
        deploy(settings, first)
        during.join()
        print(
            f"update under 8 clients: {results['ok']:,} answered, {results['failed']} failed; deploy returned after "
            f"{deployed:.1f} s, the new checkpoint answered after {swapped:.1f} s; "
            f"{percentiles(results['latencies'])}; slowest {max(results['latencies']) * 1000:.0f} ms"
        )
    finally:
        stop_serve()
        ray.shutdown()
        folder.cleanup()
    print(load())


if __name__ == "__main__":
    main()
