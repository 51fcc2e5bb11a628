"""The online forecast API without Ray: typed request and response bodies, and request -> query.

A request asks for the ``horizon`` slots after a cutoff, in one of two forms::

    {"series_id": "z0042", "history": [...], "history_end": "2015-01-09T23:30:00"}
        the series' values (passengers, oldest first, at least ``input_window`` of them), the last one at history_end
    {"series_id": "z0042", "cutoff": "2015-01-10T00:00:00"}
        the values before the cutoff read from the data the server was started with (--data)

``series_id`` may be left out when the model knows a single series. Every mistake is a
:class:`RequestError` that names the field and says what is expected; the server answers it
with a 4xx status and ``{"error": ..., "field": ...}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, ValidationError

from lit_forecast.errors import UserError
from lit_forecast.spec import WindowSpec

# A value of the history: a JSON number (no string, no boolean), finite.
Passengers = Annotated[float, Strict(), AllowInfNan(False)]
FIELDS = "series_id, history, history_end or cutoff"


class ForecastRequest(BaseModel):
    """One forecast: the history form (history + history_end) or the cutoff form (cutoff, with --data)."""

    model_config = ConfigDict(extra="forbid")

    series_id: str | None = Field(None, min_length=1, max_length=200)
    history: list[Passengers] | None = None  # passengers, oldest first; at least the model's input_window
    history_end: str | None = None  # timestamp of the last history value, on the data's grid
    cutoff: str | None = None  # first forecast slot; the server reads the history before it from its data


class ForecastResponse(BaseModel):
    """The ``horizon`` slots from the cutoff on, in passengers."""

    series_id: str
    timestamps: list[str]  # (H,) ISO timestamps of the forecast slots
    median: list[float]  # (H,) the point forecast
    # level ("0.1", "0.9", ...) -> (H,); the median is not repeated; {} for a point model
    quantiles: dict[str, list[float]]
    in_checkpoint: bool  # False: a series the model never saw, scaled on the history sent with it


class ModelInfo(BaseModel):
    """What GET /model tells about the model being served."""

    run: str | None
    checkpoint: str
    horizon: int
    input_window: int
    freq: str
    quantiles: list[float]
    series: int  # series with training statistics in the checkpoint
    train_end: str  # first timestamp that was not training data
    val_end: str
    data: str | None  # the data cutoff requests read (--data); None: history requests only


class ErrorResponse(BaseModel):
    """Every 4xx answer."""

    error: str
    field: str | None


class RequestError(UserError):
    """A request the server cannot answer: ``field`` names the part at fault, ``status`` is its HTTP status."""

    def __init__(self, field: str | None, message: str, status: int = 422):
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.detail, self.status = field, message, status

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer (an :class:`ErrorResponse`)."""
        return {"error": str(self), "field": self.field}


@dataclass(frozen=True)
class Query:
    """A checked request: forecast ``series_id`` from ``cutoff`` on."""

    series_id: str
    cutoff: pd.Timestamp  # first forecast slot
    history: np.ndarray | None  # (T,) float64 passengers ending the slot before ``cutoff``; None: read from the data


@dataclass(frozen=True)
class Context:
    """What a request is checked against: the model's window and series, and the data for cutoff requests."""

    spec: WindowSpec
    known: frozenset[str]  # series with training statistics in the checkpoint
    data_series: dict[str, pd.Timestamp] | None = None  # series in --data -> its first slot; None: no --data
    data_name: str | None = None


def read_body(raw: bytes, limit: int) -> Any:
    """The JSON value of a request body, or a RequestError (413 over ``limit`` bytes, 400 unparsable)."""
    if len(raw) > limit:
        raise RequestError("body", f"{len(raw):,} bytes, over the limit of {limit:,} (serve.max_body_bytes)", 413)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        example = '{"series_id": "z1", "history": [...], "history_end": "2015-01-09T23:30:00"}'
        raise RequestError("body", f"not valid JSON ({err}); send a JSON object such as {example}", 400) from None


def parse_request(raw: Any, context: Context, prefix: str = "") -> Query:
    """Check one request body (a decoded JSON value) -> a Query; ``prefix`` starts field names ("[3]." in a batch)."""
    if not isinstance(raw, dict):
        raise RequestError(prefix.rstrip(".") or "body", f"must be a JSON object with {FIELDS}, got {_shown(raw)}")
    try:
        request = ForecastRequest.model_validate(raw)
    except ValidationError as err:
        raise _field_error(err, prefix) from None
    spec, step = context.spec, pd.Timedelta(context.spec.freq)
    if request.history is not None and request.cutoff is not None:
        raise RequestError(f"{prefix}cutoff", "give either history (with history_end) or cutoff, not both")
    series_id = _series_id(request.series_id, context, prefix)
    if request.cutoff is not None:
        cutoff = _timestamp(request.cutoff, f"{prefix}cutoff", step)
        if context.data_series is None:
            raise RequestError(
                f"{prefix}cutoff",
                "this server has no data to read history from (start it with "
                "--data); send history and history_end instead",
            )
        if series_id not in context.data_series:
            raise RequestError(f"{prefix}series_id", f"{series_id!r} is not a series of the data {context.data_name}")
        first = context.data_series[series_id]
        if (cutoff - first) % step:
            raise RequestError(
                f"{prefix}cutoff",
                f"{request.cutoff} is not on the {spec.freq} grid of the series, which starts at {first}",
            )
        return Query(series_id, cutoff, None)
    if request.history is None:
        raise RequestError(
            f"{prefix}history", "missing: send history and history_end (or cutoff, with a server started with --data)"
        )
    if request.history_end is None:
        raise RequestError(
            f"{prefix}history_end", "missing: the timestamp of the last history value, e.g. 2015-01-09T23:30:00"
        )
    end = _timestamp(request.history_end, f"{prefix}history_end", step)
    if len(request.history) < spec.input_window:
        raise RequestError(
            f"{prefix}history",
            f"holds {len(request.history)} values; this model needs at least "
            f"{spec.input_window} (its look-back), oldest first",
        )
    return Query(series_id, end + step, np.asarray(request.history, dtype=np.float64))


def parse_batch(raw: Any, context: Context, limit: int) -> list[Query]:
    """Check a batch body (a JSON list of request bodies, at most ``limit``) -> Queries in order."""
    if not isinstance(raw, list):
        raise RequestError("body", f"must be a JSON list of forecast requests, got {_shown(raw)}")
    if not raw:
        raise RequestError("body", "the list is empty: send at least one forecast request")
    if len(raw) > limit:
        raise RequestError(
            "body", f"{len(raw):,} requests, over the limit of {limit:,} per batch (serve.max_batch_items)", 413
        )
    return [parse_request(item, context, f"[{i}].") for i, item in enumerate(raw)]


def _series_id(given: str | None, context: Context, prefix: str) -> str:
    """The series asked for; left out, the model's only series."""
    if given is not None:
        return given
    if len(context.known) == 1:
        return next(iter(context.known))
    raise RequestError(
        f"{prefix}series_id",
        f"missing: this model knows {len(context.known):,} series, so say which "
        f"(an unknown id is scaled on its own history)",
    )


def _timestamp(text: str, field: str, step: pd.Timedelta) -> pd.Timestamp:
    """``text`` as a timestamp without a UTC offset, on the ``step`` grid from midnight."""
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, OverflowError, TypeError):
        stamp = None
    if stamp is None or pd.isna(stamp):
        raise RequestError(field, f"{text!r} is not a timestamp; use ISO form, e.g. 2015-01-10T00:00:00")
    if stamp.tz is not None:
        raise RequestError(field, f"{text!r} has a UTC offset; give local time without one, like the data")
    if (stamp - stamp.normalize()) % step:
        raise RequestError(
            field,
            f"{text} is not on the {step.components.hours * 60 + step.components.minutes}-minute "
            f"grid of the model (slots start at multiples of {step} from midnight)",
        )
    return stamp


def _field_error(err: ValidationError, prefix: str) -> RequestError:
    """The first problem pydantic found, named by its field: 'history[3]', 'unknown field ...'."""
    first = err.errors(include_url=False)[0]
    loc = first["loc"]
    field = prefix + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    kind = first["type"]
    if kind == "extra_forbidden":
        return RequestError(field, f"unknown field; a forecast request takes {FIELDS}")
    if loc and loc[0] == "history" and len(loc) == 2:
        return RequestError(field, f"must be a finite number (passengers), got {_shown(first.get('input'))}")
    if loc and loc[0] == "history":
        return RequestError(field, f"must be a list of numbers, oldest first, got {_shown(first.get('input'))}")
    return RequestError(field, f"{first['msg'].lower()}, got {_shown(first.get('input'))}")


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
