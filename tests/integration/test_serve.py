"""The online forecast server on a real Ray Serve: one local 2-CPU Ray and one application per module.

Serve's local testing mode cannot run ``@serve.batch`` (Ray 2.60), so this is ``serve.run`` on
a local Ray, called over HTTP like a client would, and shut down at the end. Each test carries
a timeout: a resource deadlock hangs instead of failing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from ray import serve

from lit_forecast.config import ServeConfig
from lit_forecast.inference.pipeline import InferenceRequest, infer
from lit_forecast.serving.app import deploy, stop_serve
from tests.unit.test_inference import at, save_checkpoint, taxi_like

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
H = 4  # configs/tiny.yaml
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two checkpoints of the tiny model (the second with other weights) and a CSV of its series."""
    root = tmp_path_factory.mktemp("serve")
    first = save_checkpoint(root / "run" / "checkpoint_000000")
    second = save_checkpoint(root / "run" / "checkpoint_000001")
    raw = torch.load(f"{second}/checkpoint.ckpt", weights_only=True)
    raw["state_dict"] = {k: v * 1.5 if v.is_floating_point() else v for k, v in raw["state_dict"].items()}
    torch.save(raw, f"{second}/checkpoint.ckpt")
    values = taxi_like()
    csv = root / "series.csv"
    rows = "".join(f"{at(i):%Y-%m-%d %H:%M:%S},{float(v)!r}\n" for i, v in enumerate(values))
    csv.write_text("timestamp,value\n" + rows)
    return {"first": first, "second": second, "csv": str(csv), "values": values}


@pytest.fixture(scope="module")
def server(files):
    """A served application on a local Ray of 2 CPUs; yields its base URL and handle."""
    settings = ServeConfig(port=free_port(), max_batch_size=16, max_ongoing_requests=64, batch_wait_ms=5)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        handle = deploy(settings, files["first"], files["csv"])
        yield {"url": f"http://127.0.0.1:{settings.port}", "handle": handle, "settings": settings}
    finally:
        stop_serve()
        ray.shutdown()


def call(url: str, body: object | None = None, raw: bytes | None = None) -> tuple[int, object]:
    """(status, decoded JSON) of a GET (no body) or a POST."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def history_body(values, end_slot: int) -> dict:
    return {"history": [float(v) for v in values], "history_end": f"{at(end_slot):%Y-%m-%dT%H:%M:%S}"}


def test_the_command_serves_redeploys_the_newest_checkpoint_on_sighup_and_stops_cleanly(files, tmp_path):
    """python infer.py --serve --run R: its own local Ray (2 CPUs here), kill -HUP after a new checkpoint, Ctrl-C."""
    run = tmp_path / "run"
    shutil.copytree(files["first"], run / "checkpoint_000000")
    port = free_port()
    command = [sys.executable, str(ROOT / "infer.py"), "--serve", "--run", str(run), "--port", str(port)]
    server = subprocess.Popen(
        command,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: call(url + "/healthz")[0] == 200, server), server_output(server)
        body = history_body(files["values"][:600], 599)
        before = call(url + "/forecast", body)[1]["median"]
        shutil.copytree(files["second"], run / "checkpoint_000001")
        server.send_signal(signal.SIGHUP)
        updated = wait_for(lambda: "checkpoint_000001" in call(url + "/model")[1]["checkpoint"], server)
        assert updated, server_output(server)
        assert not np.allclose(call(url + "/forecast", body)[1]["median"], before)
        server.send_signal(signal.SIGINT)
        assert server.wait(90) == 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert "deployed " in server_output(server)


def wait_for(ready, process: subprocess.Popen, timeout: float = 150) -> bool:
    """Poll ``ready()`` (connection errors count as not yet) until it holds, the process ends, or ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if ready():
                return True
        except (OSError, KeyError, ValueError):  # not listening yet, or Serve's plain-text "not ready"
            pass
        time.sleep(0.5)
    return False


def server_output(process: subprocess.Popen) -> str:
    if process.poll() is None:
        return "(still running)"
    return process.stdout.read().decode(errors="replace")[-3000:]


def test_a_forecast_over_http_is_infers_forecast(server, files, tmp_path):
    c = 700
    frame = infer(  # the server answers with the checkpoint's bands: infer.py's with --recalibrate-days 0
        InferenceRequest(
            checkpoint=files["first"],
            data=files["csv"],
            cutoffs=[at(c)],
            use_ray=False,
            output=str(tmp_path / "f.csv"),
            recalibrate_days=0,
        )
    ).frame
    for body in (history_body(files["values"][:c], c - 1), {"cutoff": f"{at(c):%Y-%m-%dT%H:%M:%S}"}):
        status, answer = call(server["url"] + "/forecast", body)
        assert status == 200 and answer["series_id"] == "0" and len(answer["median"]) == H
        np.testing.assert_allclose(answer["median"], frame["forecast"], rtol=1e-4)
        np.testing.assert_allclose(answer["quantiles"]["0.9"], frame["q0.9"], rtol=1e-4)
    through_handle = server["handle"].forecast.remote(history_body(files["values"][:c], c - 1)).result(timeout_s=60)
    np.testing.assert_allclose(through_handle["median"], frame["forecast"], rtol=1e-4)


def test_health_and_model(server, files):
    assert call(server["url"] + "/healthz") == (200, {"status": "ok"})
    status, info = call(server["url"] + "/model")
    assert status == 200 and (info["horizon"], info["input_window"], info["quantiles"]) == (H, 16, [0.1, 0.5, 0.9])
    assert info["data"] == files["csv"] and info["checkpoint"].startswith(files["first"])


def test_bad_requests_get_4xx_naming_the_field_and_the_replica_keeps_serving(server, files):
    good = history_body(files["values"][:100], 99)
    cases = [
        ({**good, "history": good["history"][:5]}, None, 422, "history"),
        (None, json.dumps(good).replace(str(good["history"][3]), "NaN").encode(), 422, "history[3]"),
        (None, json.dumps(good).replace(str(good["history"][3]), "Infinity").encode(), 422, "history[3]"),
        ({**good, "history": good["history"][:20] + ["x"]}, None, 422, "history[20]"),
        ({**good, "extra": 1}, None, 422, "extra"),
        ({**good, "history_end": "2024-01-03T01:13:00"}, None, 422, "history_end"),
        ({"cutoff": "2024-01-03T01:10:00"}, None, 422, "cutoff"),
        ({"cutoff": f"{at(5):%Y-%m-%dT%H:%M:%S}"}, None, 422, "cutoff"),  # too little history in the data
        (None, b'{"history": [1, 2', 400, "body"),
        (None, b"[" + b"1," * 600_000 + b"1]", 413, "body"),
    ]
    for body, raw, status, field in cases:
        got, answer = call(server["url"] + "/forecast", body, raw)
        assert (got, answer["field"]) == (status, field), answer
        assert answer["error"].startswith(f"{field}: ")
    got, answer = call(server["url"] + "/forecast/batch", [good, {**good, "history": [1.0]}])
    assert (got, answer["field"]) == (422, "[1].history")
    assert call(server["url"] + "/forecast", good)[0] == 200


def test_a_batch_is_answered_in_order_and_decoded_together(server, files):
    cutoffs = list(range(400, 432))
    bodies = [history_body(files["values"][:c], c - 1) for c in cutoffs]
    status, answers = call(server["url"] + "/forecast/batch", bodies)
    assert status == 200 and [a["timestamps"][0] for a in answers] == [f"{at(c):%Y-%m-%dT%H:%M:%S}" for c in cutoffs]
    for c in (cutoffs[0], cutoffs[-1]):
        alone = call(server["url"] + "/forecast", history_body(files["values"][:c], c - 1))[1]
        np.testing.assert_allclose(answers[cutoffs.index(c)]["median"], alone["median"], rtol=1e-5)
    stats = call(server["url"] + "/stats")[1]
    sizes = {int(size) for size in stats["batch_sizes"]}
    assert max(sizes) == server["settings"].max_batch_size  # 32 requests queued at once fill whole batches


def test_a_new_checkpoint_is_deployed_while_clients_send_and_none_fails(server, files):
    body = history_body(files["values"][:600], 599)
    before = call(server["url"] + "/forecast", body)[1]["median"]
    statuses, stop = [], threading.Event()

    def client() -> None:
        while not stop.is_set():
            statuses.append(call(server["url"] + "/forecast", body)[0])

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(client)
        try:
            deploy(server["settings"], files["second"], files["csv"])
            assert serving(server["url"], files["second"])  # the replica swaps the new model in once loaded
        finally:
            stop.set()
    assert statuses and set(statuses) == {200}
    after = call(server["url"] + "/forecast", body)[1]["median"]
    assert not np.allclose(before, after)
    deploy(server["settings"], files["first"], files["csv"])  # as the other tests expect
    assert serving(server["url"], files["first"])


def serving(url: str, checkpoint: str, timeout: float = 60) -> bool:
    """True once GET /model names ``checkpoint`` (within ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if call(url + "/model")[1]["checkpoint"].startswith(checkpoint):
            return True
        time.sleep(0.2)
    return False
