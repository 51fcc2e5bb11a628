"""Online forecasts with Ray Serve: ``python infer.py --serve``. The one serving module that imports Ray or FastAPI.

    POST /forecast         one request body (see lit_forecast.serving.api) -> a ForecastResponse
    POST /forecast/batch   a JSON list of request bodies -> the responses in order
    GET  /healthz          {"status": "ok"}
    GET  /model            run, checkpoint, horizon, look-back, quantile levels, training range
    GET  /stats            this replica's batches: how many, and how many of each size

One class deployment, :class:`Forecaster`, is both the FastAPI ingress and the model: each
replica loads the checkpoint once (in ``reconfigure``, from its ``user_config``), checks each
request, and decodes the requests that arrive together in one batch (``@serve.batch``; the
batching itself is :meth:`ServedModel.forecast_batch`, plain code). A newer checkpoint or run
is deployed by :func:`deploy` again (``kill -HUP`` of the server): Serve starts the new
replicas beside the old ones (``max_surge_percent=100``), which answer until the new ones are
ready and then drain, so no request is dropped, refused or stalled. That needs room for twice
the replicas' CPUs and GPU shares; without it each old replica is stopped before its
replacement is ready, and requests wait meanwhile (a warning says so).
"""

# No `from __future__ import annotations`: FastAPI reads the route methods' annotations (Request) at runtime,
# and Serve's ingress wrapper hides this module's globals from string annotations.
import asyncio
import collections
import errno
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from lit_forecast import layout, ray_cluster
from lit_forecast.config import ServeConfig
from lit_forecast.errors import CheckpointError, ConfigError
from lit_forecast.serving.api import (
    ErrorResponse,
    ForecastResponse,
    ModelInfo,
    Query,
    RequestError,
    parse_batch,
    parse_request,
    read_body,
)
from lit_forecast.serving.engine import ServedModel

log = logging.getLogger(__name__)

APP_NAME = "lit_forecast"
QUIET = {"log_level": "WARNING", "enable_access_log": False}  # a line per request costs more than a forecast
api = FastAPI(title="lit_forecast", description="Online forecasts of a trained lit_forecast run")
ERRORS = {status: {"model": ErrorResponse} for status in (400, 413, 422)}


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


@serve.deployment
@serve.ingress(api)
class Forecaster:
    """One replica: the model loaded once, requests checked here and decoded in batches."""

    def __init__(self, settings: dict):
        """``settings``: the ``serve`` config section as a dict; the model comes with ``reconfigure``."""
        import torch

        self.settings = ServeConfig(**settings)
        torch.set_num_threads(max(1, int(self.settings.cpus_per_replica)))
        self.device = "cuda" if self.settings.gpus_per_replica > 0 and torch.cuda.is_available() else "cpu"
        self.forecast_batch.set_max_batch_size(self.settings.max_batch_size)
        self.forecast_batch.set_batch_wait_timeout_s(self.settings.batch_wait_ms / 1000)
        self.model: ServedModel | None = None
        self.batch_sizes: collections.Counter[int] = collections.Counter()

    def reconfigure(self, user_config: dict) -> None:
        """Load ``user_config['checkpoint']`` (and its ``data``): before the replica answers anything."""
        started = time.perf_counter()
        self.model = ServedModel(user_config["checkpoint"], user_config.get("data"), self.device)
        log.info("replica loaded %s in %.2f s", self.model.checkpoint, time.perf_counter() - started)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def forecast_batch(self, queries: list[Query]) -> list[dict | RequestError]:
        """The requests that arrived together, decoded in one call (sizes set from the config in __init__)."""
        self.batch_sizes[len(queries)] += 1
        return self.model.forecast_batch(queries)

    async def forecast(self, body: object) -> dict:
        """One request body (a decoded JSON value) -> a ForecastResponse body, or the error body with its status.

        What the HTTP route runs, and what a deployment handle calls: ``handle.forecast.remote(body)``.
        """
        try:
            answer = await self.forecast_batch(parse_request(body, self.model.context))
        except RequestError as err:
            return {**err.body(), "status": err.status}
        return {**answer.body(), "status": answer.status} if isinstance(answer, RequestError) else answer

    @api.post("/forecast", response_model=ForecastResponse, responses=ERRORS)
    async def post_forecast(self, request: Request):
        try:
            body = read_body(await self._body(request), self.settings.max_body_bytes)
            answer = await self.forecast_batch(parse_request(body, self.model.context))
        except RequestError as err:
            return error_response(err)
        # Built and checked by ServedModel: sent as it is, without FastAPI validating it again.
        return error_response(answer) if isinstance(answer, RequestError) else JSONResponse(answer)

    @api.post("/forecast/batch", response_model=list[ForecastResponse], responses=ERRORS)
    async def post_batch(self, request: Request):
        try:
            body = read_body(await self._body(request), self.settings.max_body_bytes)
            queries = parse_batch(body, self.model.context, self.settings.max_batch_items)
        except RequestError as err:
            return error_response(err)
        answers = await asyncio.gather(*(self.forecast_batch(q) for q in queries))
        for i, answer in enumerate(answers):
            if isinstance(answer, RequestError):
                return error_response(RequestError(f"[{i}].{answer.field}", answer.detail, answer.status))
        return JSONResponse(answers)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/model", response_model=ModelInfo)
    async def model_info(self) -> dict:
        return self.model.info()

    @api.get("/stats")
    async def stats(self) -> dict:
        """Batches decoded by this replica since it started: how many, forecasts in all, and the count of each size."""
        return {
            "batches": sum(self.batch_sizes.values()),
            "forecasts": sum(size * count for size, count in self.batch_sizes.items()),
            "batch_sizes": {str(size): count for size, count in sorted(self.batch_sizes.items())},
        }

    async def _body(self, request: Request) -> bytes:
        """The body, refused before it is read when its declared length is over the limit."""
        declared = request.headers.get("content-length", "")
        limit = self.settings.max_body_bytes
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(
                "body", f"{int(declared):,} bytes, over the limit of {limit:,} (serve.max_body_bytes)", 413
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError("body", f"over the limit of {limit:,} bytes (serve.max_body_bytes)", 413)
            chunks.append(chunk)
        return b"".join(chunks)


def application(
    settings: ServeConfig, checkpoint: str, data: str | None = None, surge: bool = True
) -> serve.Application:
    """The Serve application for ``checkpoint`` (a path every replica can read, or a URI) and ``data``.

    ``surge``: an update starts the new replicas before it stops the old ones.
    """
    return Forecaster.options(
        num_replicas=settings.replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        max_surge_percent=100 if surge else 0,
        ray_actor_options={"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica},
        user_config={"checkpoint": checkpoint, "data": data},
    ).bind(settings.__dict__.copy())


def deploy(settings: ServeConfig, checkpoint: str, data: str | None = None):
    """Run (or update: without downtime where there is room) the app; returns the ingress deployment's handle."""
    have = ray.cluster_resources()
    surge = (
        have.get("CPU", 0) >= 2 * settings.replicas * settings.cpus_per_replica
        and have.get("GPU", 0) >= 2 * settings.replicas * settings.gpus_per_replica
    )
    if not surge:
        log.warning(
            "Ray has %g CPUs and %g GPUs, not enough to start %d replica(s) of %g CPU and %g GPU beside the "
            "old ones: an update stops each old replica before its replacement is ready, and requests wait "
            "meanwhile",
            have.get("CPU", 0),
            have.get("GPU", 0),
            settings.replicas,
            settings.cpus_per_replica,
            settings.gpus_per_replica,
        )
    app = application(settings, checkpoint, data, surge)
    return serve.run(app, name=APP_NAME, route_prefix="/", logging_config=QUIET)


@dataclass
class ServeRequest:
    """What ``python infer.py --serve`` was asked."""

    settings: ServeConfig
    run: str | None = None
    checkpoint: str | None = None
    storage: str = "runs"
    data: str | None = None


def resolve_checkpoint(request: ServeRequest) -> str:
    """The checkpoint to serve: the given one, or the best of the run (default: the latest finished run)."""
    chosen = request.checkpoint or layout.best_checkpoint(request.run or layout.latest_run(request.storage))
    return layout.checkpoint_file(chosen)


def check_port(host: str, port: int) -> None:
    """A ConfigError if nothing can listen on ``host:port`` (in use, or not an address of this machine)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use (another server?): stop it, or choose "
                    f"another with --port N"
                ) from None
            raise ConfigError(
                f"cannot listen on {host}:{port} ({err.strerror or err}): give --host an address of this "
                f"machine, e.g. 127.0.0.1 or 0.0.0.0"
            ) from None


def serve_forever(request: ServeRequest) -> None:
    """Start the server and keep it running until SIGINT or SIGTERM; SIGHUP deploys the run's current best checkpoint.

    Everything a user can get wrong (no checkpoint, a port in use, too many CPUs asked) is a
    UserError raised before Ray starts.
    """
    s = request.settings
    started = time.perf_counter()
    checkpoint = resolve_checkpoint(request)
    check_port(s.host, s.port)
    ServedModel(checkpoint, request.data)  # a checkpoint or data that cannot be used fails here, not in a replica
    ray_cluster.init_ray(
        s.replicas * s.cpus_per_replica, s.replicas * s.gpus_per_replica, "--replicas, --replica-cpus or --replica-gpus"
    )
    stop, reload = threading.Event(), threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: (reload.set(), stop.set()))
    try:
        serve.start(http_options={"host": s.host, "port": s.port}, logging_config=QUIET)
        deploy(s, checkpoint, request.data)
        log.info(
            "serving %s on http://%s:%d (%d replica%s, batches up to %d) in %.1f s; "
            "kill -HUP %d deploys the run's newest best checkpoint",
            checkpoint,
            s.host,
            s.port,
            s.replicas,
            "s" if s.replicas > 1 else "",
            s.max_batch_size,
            time.perf_counter() - started,
            os.getpid(),
        )
        while True:
            stop.wait()
            if not reload.is_set():
                break
            stop.clear()
            reload.clear()
            checkpoint = _redeploy(request, checkpoint)
    finally:
        log.info("shutting down")
        stop_serve()
        ray.shutdown()


def stop_serve(timeout_s: float = 20) -> None:
    """serve.shutdown, given up after ``timeout_s``: with its raylet gone (a Ctrl-C reaches the whole
    process group, Ray's own processes too) it would wait forever; ray.shutdown then ends what is left."""
    stopping = threading.Thread(target=serve.shutdown, name="serve-shutdown", daemon=True)
    stopping.start()
    stopping.join(timeout_s)
    if stopping.is_alive():
        log.warning("Serve did not shut down within %g s; stopping Ray", timeout_s)


def _redeploy(request: ServeRequest, current: str) -> str:
    """Deploy the newest best checkpoint of the run; on any user error keep serving ``current``."""
    try:
        checkpoint = resolve_checkpoint(request)
        ServedModel(checkpoint, request.data)
    except (CheckpointError, ConfigError) as err:
        log.error("not redeployed, still serving %s: %s", current, err)
        return current
    deploy(request.settings, checkpoint, request.data)
    log.info("deployed %s: each replica answers with it as soon as it has loaded it", checkpoint)
    return checkpoint
