"""Config: YAML loading, unknown keys, types, cross-field rules, overrides, round trips."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from lit_forecast import config as cfg
from lit_forecast.config import ConfigError

# A small valid file; every test starts from it and breaks one thing.
BASE = {
    "data": {"input_window": 16, "horizon": 4, "train_end": "2024-01-10", "val_end": "2024-01-20"},
    "model": {"d_model": 32, "nhead": 4, "patch_len": 4, "seasonal_lag": 8, "daily_lag": 0},
    "train": {"lr": 0.01},
    "cluster": {"num_workers": 3},
}


@pytest.fixture
def write_yaml(tmp_path):
    """Write a (deep-merged) variant of BASE to a YAML file; returns its path."""

    def write(changes: dict | None = None, text: str | None = None):
        path = tmp_path / "config.yaml"
        if text is None:
            raw = json.loads(json.dumps(BASE))
            for section, keys in (changes or {}).items():
                if isinstance(keys, dict) and isinstance(raw.get(section), dict):
                    raw[section].update(keys)
                else:
                    raw[section] = keys
            text = yaml.safe_dump(raw)
        path.write_text(text)
        return path

    return write


def test_load_reads_values_and_keeps_defaults(write_yaml):
    config = cfg.load(write_yaml({"train": {"lr": 1}}))
    assert config.data.input_window == 16 and config.data.horizon == 4
    assert config.model.seasonal_lag == 8 and config.cluster.num_workers == 3
    assert config.train.lr == 1.0 and type(config.train.lr) is float  # int widened to float
    assert config.data.freq == "30min" and config.train.batch_size == 32  # untouched defaults


def test_default_config_is_valid():
    assert cfg.validate(cfg.Config()) is not None


def test_the_local_config_is_the_dataclass_defaults_and_the_searched_keys(tmp_path):
    # One source of defaults: `python train.py` trains Config() with the four keys the search chose.
    searched = ["model.d_model=32", "model.dropout=0.054", "train.lr=0.00217", "train.batch_size=16"]
    (tmp_path / "empty.yaml").write_text("{}\n")
    assert cfg.load() == cfg.load(tmp_path / "empty.yaml", searched)
    assert cfg.load(tmp_path / "empty.yaml") == cfg.Config()
    assert cfg.Config().model.members == 2 and cfg.Config().run.name == "nyc_taxi_local"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data": {"horizn": 4}}, "unknown key 'data.horizn' (did you mean 'data.horizon'?)"),
        ({"model": {"d_modle": 8}}, "unknown key 'model.d_modle' (did you mean 'model.d_model'?)"),
        ({"modle": {}}, "unknown key 'modle' (did you mean 'model'?)"),
        ({"cluster": {"zzz": 1}}, "unknown key 'cluster.zzz' (valid: num_workers, use_gpu,"),
    ],
)
def test_unknown_key_names_dotted_key_and_suggestion(write_yaml, changes, message):
    path = write_yaml(changes)
    with pytest.raises(ConfigError) as err:
        cfg.load(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_key_in_override_is_named(write_yaml):
    with pytest.raises(
        ConfigError, match=re.escape("unknown key 'train.bach_size' (did you mean 'train.batch_size'?)")
    ):
        cfg.load(write_yaml(), overrides=["train.bach_size=8"])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data": {"horizon": "four"}}, "'data.horizon' must be int, got 'four'"),
        ({"data": {"horizon": 4.5}}, "'data.horizon' must be int, got 4.5"),
        ({"data": {"horizon": True}}, "'data.horizon' must be int, got True"),
        ({"train": {"lr": "fast"}}, "'train.lr' must be float, got 'fast'"),
        ({"cluster": {"use_gpu": 1}}, "'cluster.use_gpu' must be bool, got 1"),
        ({"data": {"series_column": 3}}, "'data.series_column' must be str or null, got 3"),
        ({"data": {"aggregation": "median"}}, "'data.aggregation' must be one of ['sum', 'mean'], got 'median'"),
        ({"train": {"limit_train_batches": "all"}}, "'train.limit_train_batches' must be int or float, got 'all'"),
        ({"data": 5}, "'data' must be a mapping, got 5"),
    ],
)
def test_wrong_type_names_key(write_yaml, changes, message):
    with pytest.raises(ConfigError) as err:
        cfg.load(write_yaml(changes))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"model": {"d_model": 30, "nhead": 4}}, ["'model.d_model' (30)", "'model.nhead' (4)"]),
        (
            {"data": {"train_end": "2024-01-20", "val_end": "2024-01-10"}},
            ["split boundaries out of order", "data.train_end", "data.val_end"],
        ),
        ({"data": {"train_end": "2024-01-10", "val_end": "2024-01-10"}}, ["split boundaries out of order"]),
        ({"data": {"test_end": "2024-01-15"}}, ["split boundaries out of order", "data.val_end", "data.test_end"]),
        ({"model": {"seasonal_lag": 3}}, ["'model.seasonal_lag' (3)", "'data.horizon' (4)"]),
        ({"model": {"seasonal_lag": 17}}, ["'model.seasonal_lag' (17)", "'data.input_window' (16)"]),
        ({"model": {"patch_len": 5}}, ["'data.input_window' (16)", "'model.patch_len' (5)"]),
        ({"data": {"horizon": 0}}, ["'data.horizon' must be >= 1"]),
        ({"data": {"freq": "soon"}}, ["'data.freq'"]),
        ({"data": {"val_end": "not a date"}}, ["'data.val_end' is not a timestamp"]),
        ({"cluster": {"backend": "nccl"}}, ["nccl", "use_gpu"]),
        ({"data": {"freq": "7min"}}, ["'data.freq' must divide a day"]),
        ({"cluster": {"cpus_per_worker": 0}}, ["'cluster.cpus_per_worker' must be positive"]),
        ({"train": {"warmup_steps": -1}}, ["'train.warmup_steps' must be >= 0"]),
        ({"train": {"min_lr_ratio": 1.5}}, ["'train.min_lr_ratio' must be in [0, 1]"]),
        ({"train": {"ema_decay": 1.0}}, ["'train.ema_decay' must be in [0, 1)"]),
    ],
)
def test_cross_field_rules(write_yaml, changes, fragments):
    with pytest.raises(ConfigError) as err:
        cfg.load(write_yaml(changes))
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize("lag", [0, 4, 16])  # off, = horizon, = input_window: the inclusive edges
def test_seasonal_lag_edges_are_valid(write_yaml, lag):
    assert cfg.load(write_yaml({"model": {"seasonal_lag": lag}})).model.seasonal_lag == lag


def test_overrides_nested_typed_and_null(write_yaml):
    config = cfg.load(
        write_yaml({"data": {"test_end": "2024-01-30", "series_column": "sid"}}),
        overrides=[
            "data.horizon=8",  # file says 4
            "model.nhead=8",
            "train.lr=0.5",
            "data.freq=1h",
            "data.test_end=null",
            "data.series_column=",  # empty means null too
            "cluster.use_gpu=true",
            "cluster.backend=nccl",  # valid only together with the line above
            "run.name=exp 1",
        ],
    )
    assert config.data.horizon == 8 and config.model.nhead == 8
    assert config.train.lr == 0.5 and config.data.freq == "1h"
    assert config.data.test_end is None and config.data.series_column is None
    assert config.cluster.use_gpu is True and config.cluster.backend == "nccl"
    assert config.run.name == "exp 1"
    assert config.data.input_window == 16  # not overridden: from the file


def test_override_creates_missing_section(write_yaml):
    path = write_yaml(
        text="data:\n  input_window: 16\n  horizon: 4\nmodel:\n  patch_len: 4\n  seasonal_lag: 0\n  daily_lag: 0\n"
    )
    assert cfg.load(path, overrides=["run.storage=/tmp/x"]).run.storage == "/tmp/x"


def test_overrides_are_validated(write_yaml):
    with pytest.raises(
        ConfigError, match=re.escape("'data.input_window' (12) must be a multiple of 'model.patch_len' (8)")
    ):
        cfg.load(
            write_yaml(),
            overrides=["model.patch_len=8", "data.input_window=12", "model.seasonal_lag=0", "model.daily_lag=0"],
        )


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.horizon", "must look like dotted.key=value"),
        ("=4", "must look like dotted.key=value"),
        ("data.horizon.deep=1", "'horizon' is not a section"),
    ],
)
def test_malformed_override(write_yaml, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cfg.load(write_yaml(), overrides=[override])


def test_missing_and_invalid_files(tmp_path, write_yaml):
    with pytest.raises(ConfigError, match="config file not found"):
        cfg.load(tmp_path / "nope.yaml")
    path = write_yaml(text="data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        cfg.load(path)
    assert str(path) in str(err.value)


def test_round_trip_to_dict_from_dict(write_yaml):
    config = cfg.load(write_yaml(), overrides=["data.series_column=sid", "train.limit_train_batches=3"])
    plain = cfg.to_dict(config)
    assert json.loads(json.dumps(plain)) == plain  # primitives only: safe for Ray and hparams
    assert cfg.from_dict(plain) == config
    assert cfg.from_dict(yaml.safe_load(cfg.dump(config))) == config
    plain["model"]["nhead"] = "4"  # re-validated on arrival
    with pytest.raises(ConfigError, match=re.escape("'model.nhead' must be int")):
        cfg.from_dict(plain)


# YAML corner cases and degenerate sizes.


def test_unquoted_date_override_is_accepted(write_yaml):
    assert cfg.load(write_yaml(), overrides=["data.val_end=2024-01-25"]).data.val_end == "2024-01-25"


def test_exponent_float_override_is_accepted(write_yaml):
    assert cfg.load(write_yaml(), overrides=["train.lr=1e-4"]).train.lr == 1e-4


def test_zero_heads_is_a_config_error(write_yaml):
    with pytest.raises(ConfigError, match="model.nhead"):
        cfg.load(write_yaml({"model": {"nhead": 0}}))
