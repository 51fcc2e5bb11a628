"""Online forecasts without Ray: request checks, the batching method, and the server's refusals.

The batching method (ServedModel.forecast_batch) is what each Serve replica runs on a batch;
here it is called directly and compared with infer.py's plain path on the same windows.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pytest
import torch

import infer as infer_script
from lit_forecast import config as cfg
from lit_forecast.errors import ConfigError
from lit_forecast.inference.pipeline import InferenceRequest, infer
from lit_forecast.serving.api import Context, RequestError, parse_batch, parse_request, read_body
from lit_forecast.serving.engine import ServedModel
from lit_forecast.spec import WindowSpec
from tests.unit.test_inference import SLOTS, at, save_checkpoint, taxi_like

W, H = 16, 4  # configs/tiny.yaml, as test_inference's checkpoint
SPEC = WindowSpec(W, H, "30min")
ONE = Context(SPEC, frozenset({"0"}))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return save_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_000000")


@pytest.fixture(scope="module")
def fleet_checkpoint(tmp_path_factory) -> str:
    """The same model, trained (as its config says) on a file with a series_id column."""
    folder = save_checkpoint(tmp_path_factory.mktemp("fleet") / "checkpoint_000000")
    raw = torch.load(f"{folder}/checkpoint.ckpt", weights_only=True)
    raw["lit_forecast_config"]["data"]["series_column"] = "series_id"
    torch.save(raw, f"{folder}/checkpoint.ckpt")
    return folder


@pytest.fixture
def csv(synthetic_csv):
    """A CSV of taxi_like values from 2024-01-01 (NaN: a missing row); with ``series_id`` a series column."""

    def make(values=None, series_id=None, name="series.csv") -> str:
        values = taxi_like() if values is None else values
        rows = [
            (f"{at(i):%Y-%m-%d %H:%M:%S}", repr(float(v))) + ((series_id,) if series_id else ())
            for i, v in enumerate(values)
            if not np.isnan(v)
        ]
        header = ("timestamp", "value", "series_id") if series_id else ("timestamp", "value")
        return str(synthetic_csv(rows=rows, header=header, name=name))

    return make


def history_body(values, end_slot: int, **extra) -> dict:
    history = [v if isinstance(v, (str, bool)) else float(v) for v in values]  # strings and booleans kept: refused
    return {"history": history, "history_end": f"{at(end_slot):%Y-%m-%dT%H:%M:%S}", **extra}


def refused(body, context=ONE) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_request(body, context)
    return caught.value


# --- request checks ---------------------------------------------------------------------------


def test_a_history_request_becomes_a_query_with_the_next_slot_as_cutoff():
    q = parse_request(history_body(range(20), 99), ONE)
    assert (q.series_id, q.cutoff) == ("0", at(100))
    np.testing.assert_array_equal(q.history, np.arange(20.0))


@pytest.mark.parametrize(
    "body, field, words",
    [
        (history_body(range(W - 1), 99), "history", f"holds {W - 1} values; this model needs at least {W}"),
        ({**history_body(range(W), 99), "colour": "red"}, "colour", "unknown field"),
        (history_body([1.0] * 5 + ["many"] + [1.0] * 10, 99), "history[5]", 'finite number (passengers), got "many"'),
        (history_body([1.0] * 3 + [True] + [1.0] * 12, 99), "history[3]", "finite number"),
        ({"history": 7, "history_end": "2024-01-02T00:00:00"}, "history", "list of numbers"),
        (
            {**history_body(range(W), 99), "history_end": "2024-01-02T00:10:00"},
            "history_end",
            "not on the 30-minute grid",
        ),
        ({**history_body(range(W), 99), "history_end": "yesterday-ish"}, "history_end", "is not a timestamp"),
        ({**history_body(range(W), 99), "history_end": "2024-01-02T00:00:00+01:00"}, "history_end", "UTC offset"),
        ({"history": [1.0] * W}, "history_end", "missing"),
        ({"series_id": "0"}, "history", "missing"),
        ({**history_body(range(W), 99), "cutoff": "2024-01-03T00:00:00"}, "cutoff", "not both"),
        ({"cutoff": "2024-01-03T00:00:00"}, "cutoff", "no data to read history from"),
        ({**history_body(range(W), 99), "series_id": 42}, "series_id", "string"),
        ([1, 2, 3], "body", "must be a JSON object"),
    ],
)
def test_bad_requests_name_their_field(body, field, words):
    err = refused(body)
    assert err.field == field and err.status == 422
    assert words in str(err) and err.body() == {"error": str(err), "field": field}


def test_nan_and_infinity_in_the_json_text_are_refused_by_field():
    text = '{"history": [1, 2, NaN, 4], "history_end": "2024-01-02T00:00:00"}'
    assert refused(read_body(text.encode(), 10_000)).field == "history[2]"
    text = '{"history": [1, Infinity], "history_end": "2024-01-02T00:00:00"}'
    assert refused(read_body(text.encode(), 10_000)).field == "history[1]"


def test_unparsable_and_oversized_bodies_are_400_and_413():
    with pytest.raises(RequestError) as caught:
        read_body(b'{"history": [1, 2', 10_000)
    assert (caught.value.status, caught.value.field) == (400, "body")
    with pytest.raises(RequestError) as caught:
        read_body(b"[" + b"1," * 3000 + b"1]", 2048)
    assert (caught.value.status, caught.value.field) == (413, "body") and "over the limit of 2,048" in str(caught.value)


def test_several_series_need_a_series_id():
    many = Context(SPEC, frozenset({"a", "b"}))
    err = refused(history_body(range(W), 99), many)
    assert err.field == "series_id" and "knows 2 series" in str(err)
    assert parse_request(history_body(range(W), 99, series_id="new"), many).series_id == "new"


def test_a_batch_names_the_item_at_fault_and_has_a_size_limit():
    good = history_body(range(W), 99)
    assert [q.cutoff for q in parse_batch([good, good], ONE, 10)] == [at(100)] * 2
    with pytest.raises(RequestError) as caught:
        parse_batch([good, {**good, "history": [1.0] * 3}], ONE, 10)
    assert caught.value.field == "[1].history"
    with pytest.raises(RequestError) as caught:
        parse_batch([good] * 3, ONE, 2)
    assert caught.value.status == 413
    with pytest.raises(RequestError):
        parse_batch(good, ONE, 10)


def test_cutoff_requests_are_checked_against_the_data():
    data = Context(SPEC, frozenset({"0"}), {"z1": at(0)}, "fleet.csv")
    assert parse_request({"series_id": "z1", "cutoff": str(at(50))}, data).cutoff == at(50)
    err = refused({"series_id": "z2", "cutoff": str(at(50))}, data)
    assert err.field == "series_id" and "'z2' is not a series of the data fleet.csv" in str(err)


# --- the batching method against infer.py's plain path ---------------------------------------------


def plain_infer(checkpoint: str, data: str, cutoff_slot: int, tmp_path) -> pd.DataFrame:
    """infer.py's forecast of one window (no Ray), as its frame, with the checkpoint's bands as served."""
    result = infer(
        InferenceRequest(
            checkpoint=checkpoint,
            data=data,
            cutoffs=[at(cutoff_slot)],
            use_ray=False,
            output=str(tmp_path / f"f{cutoff_slot}.csv"),
            recalibrate_days=0,  # the server does not refit the bands on the days before
        )
    )
    return result.frame


def assert_same(answer: dict, frame: pd.DataFrame) -> None:
    np.testing.assert_allclose(answer["median"], frame["forecast"], rtol=1e-4)
    np.testing.assert_allclose(answer["quantiles"]["0.1"], frame["q0.1"], rtol=1e-4)
    np.testing.assert_allclose(answer["quantiles"]["0.9"], frame["q0.9"], rtol=1e-4)
    assert answer["timestamps"] == [f"{t:%Y-%m-%dT%H:%M:%S}" for t in frame["timestamp"]]


def test_a_served_forecast_is_infers_forecast_for_a_known_series(checkpoint, csv, tmp_path):
    values, c = taxi_like(), 2 * 336 + 7
    model = ServedModel(checkpoint)
    [answer] = model.forecast_batch([parse_request(history_body(values[:c], c - 1), model.context)])
    assert answer["series_id"] == "0" and answer["in_checkpoint"] and sorted(answer["quantiles"]) == ["0.1", "0.9"]
    assert_same(answer, plain_infer(checkpoint, csv(values), c, tmp_path))


def test_an_unknown_series_is_scaled_on_its_own_history_as_infer_does(fleet_checkpoint, csv, tmp_path):
    values, c = 3 * taxi_like(seed=1) + 500, 400
    checkpoint = fleet_checkpoint
    model = ServedModel(checkpoint)
    body = history_body(values[:c], c - 1, series_id="z9")
    [answer] = model.forecast_batch([parse_request(body, model.context)])
    assert not answer["in_checkpoint"]
    assert_same(answer, plain_infer(checkpoint, csv(values, series_id="z9"), c, tmp_path))
    # the same values under the checkpoint's own series are scaled otherwise: the check above can fail
    [known] = model.forecast_batch([parse_request({**body, "series_id": "0"}, model.context)])
    assert not np.allclose(known["median"], answer["median"], rtol=1e-3)


def test_cutoff_requests_read_the_data_and_a_skipped_one_fails_alone(checkpoint, csv, tmp_path):
    values = taxi_like()
    values[500:510] = np.nan  # a 5-hour gap: no window whose history touches it
    data = csv(values)
    model = ServedModel(checkpoint, data)
    cutoffs = [900, 505, 3 * 336, 950]  # infer.py backtests: its baselines need a gap-free week before each cutoff
    queries = [parse_request({"cutoff": f"{at(c):%Y-%m-%dT%H:%M:%S}"}, model.context) for c in cutoffs]
    answers = model.forecast_batch(queries)
    assert isinstance(answers[1], RequestError) and answers[1].field == "cutoff" and "missing" in str(answers[1])
    assert_same(answers[0], plain_infer(checkpoint, data, cutoffs[0], tmp_path))
    assert_same(answers[3], plain_infer(checkpoint, data, cutoffs[3], tmp_path))
    assert answers[2]["timestamps"][0] == f"{at(3 * 336):%Y-%m-%dT%H:%M:%S}"  # the slot after the data: forecast
    late = model.forecast_batch([parse_request({"cutoff": str(at(SLOTS + 1))}, model.context)])[0]
    assert isinstance(late, RequestError) and "the latest cutoff is" in str(late)
    alone = model.forecast_batch([queries[1]])[0]
    assert isinstance(alone, RequestError) and str(alone) == str(answers[1])


def test_a_batch_gives_each_window_the_number_it_gets_alone(checkpoint):
    model = ServedModel(checkpoint)
    rng = np.random.default_rng(3)
    bodies = [
        history_body(taxi_like(seed=i)[: 40 + i], 200 + i, series_id=sid)
        for i, sid in enumerate(["0", "z1", "0", "z2", "0"])
    ]
    queries = [parse_request(b, model.context) for b in bodies]
    together = model.forecast_batch(queries)
    for q, answer in zip(queries, together):
        [alone] = model.forecast_batch([q])
        np.testing.assert_allclose(answer["median"], alone["median"], rtol=1e-5)
        assert answer["series_id"] == q.series_id
    assert len({tuple(a["median"]) for a in together}) == 5 and rng is not None


def test_model_info_describes_the_checkpoint(checkpoint):
    info = ServedModel(checkpoint).info()
    assert (info["horizon"], info["input_window"], info["freq"], info["quantiles"]) == (H, W, "30min", [0.1, 0.5, 0.9])
    assert info["checkpoint"].endswith("checkpoint_000000/checkpoint.ckpt") and info["series"] == 1
    assert info["train_end"] == str(at(2 * 336)) and info["data"] is None


# --- settings and the server's refusals ---------------------------------------------------------


def test_serve_settings_are_checked():
    assert cfg.validate_serve(cfg.ServeConfig()).port == 8000
    with pytest.raises(ConfigError, match="'serve.max_ongoing_requests' .* caps every batch"):
        cfg.validate_serve(cfg.ServeConfig(max_batch_size=64, max_ongoing_requests=64))
    with pytest.raises(ConfigError, match=r"unknown key 'serve.replica' \(did you mean 'serve.replicas'\?\)"):
        cfg.from_dict({"serve": {"replica": 2}})


def test_serving_a_run_without_checkpoint_exits_with_one_error(tmp_path, capsys):
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_:
        infer_script.main(["--serve", "--run", str(tmp_path / "runs" / "empty")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: run ") and "holds no checkpoint_*" in err
    assert err.count("error:") == 1 and "Traceback" not in err


def test_serving_on_a_port_in_use_exits_with_one_error(checkpoint, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            infer_script.main(["--serve", "--checkpoint", checkpoint, "--port", str(port)])
    err = capsys.readouterr().err
    assert (
        exit_.value.code == 2
        and err
        == f"error: port {port} on 127.0.0.1 is already in use (another server?): "
        f"stop it, or choose another with --port N\n"
    )


def test_serve_flags_are_checked_before_anything_starts(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_:
        infer_script.main(["--serve", "--checkpoint", checkpoint, "--replicas", "0"])
    assert exit_.value.code == 2 and "'serve.replicas' must be >= 1" in capsys.readouterr().err


def test_json_bodies_of_answers_round_trip(checkpoint):
    model = ServedModel(checkpoint)
    [answer] = model.forecast_batch([parse_request(history_body(range(W), 99), model.context)])
    assert json.loads(json.dumps(answer)) == answer


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--serve", "--cutoffs", "2024-01-10", "--output", "f.csv"], "--cutoffs, --output: not used by --serve"),
        (["--serve", "--batch-size", "64", "--no-ray"], "--batch-size, --no-ray: not used by --serve"),
        (["--serve", "--recalibrate-days", "0"], "--recalibrate-days: not used by --serve"),
        (["--port", "8001"], "set the server: add --serve"),
    ],
)
def test_flags_of_the_other_mode_are_refused(checkpoint, capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        infer_script.main(["--checkpoint", checkpoint, *argv])
    assert exit_.value.code == 2 and words in capsys.readouterr().err
