"""bench.scale: the exponent fit is exact on power-law costs, and results files merge by step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scale


def result(zones: int, **costs) -> dict:
    """A results file as the steps write it, with the costs given as a * zones^b."""
    out = {"zones": zones}
    for path, (a, b) in costs.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = a * zones**b
    return out


def test_power_law_fit_is_exact():
    a, b = scale.fit_power_law([(z, 0.02 * z**1.13) for z in (100, 1000, 5000)])
    assert b == pytest.approx(1.13, abs=1e-12)
    assert a == pytest.approx(0.02, rel=1e-10)


def test_every_cost_gets_its_own_exponent():
    costs = {
        "prepare.ray-1cpu.wall_s": (0.03, 1.0),
        "prepare.ray-2cpu.wall_s": (0.02, 0.9),
        "train.epoch_s": (40.0, 0.1),
        "backtest.wall_s": (0.05, 1.2),
    }
    results = [result(z, **costs) for z in (100, 1000, 5000)]
    results[2]["forecast"] = {"wall_s": 9.0}  # one zone count only: nothing to fit
    results[0]["train"]["validation_s"] = 0.0  # not a cost on a log scale: left out
    fits = scale.fit_exponents(results)
    assert set(fits) == set(costs)
    for name, (a, b) in costs.items():
        assert fits[name]["b"] == pytest.approx(b, abs=1e-12), name
        assert fits[name]["a"] == pytest.approx(a, rel=1e-10), name
        assert [z for z, _ in fits[name]["points"]] == [100, 1000, 5000]


def test_one_zone_count_cannot_be_fitted():
    with pytest.raises(ValueError, match="two or more zone counts"):
        scale.fit_power_law([(100, 1.0), (100, 2.0)])


def test_steps_merge_into_one_results_file(tmp_path):
    path = str(tmp_path / "results-100.json")
    scale.merge_results(path, "prepare", {"wall_s": 3.0}, 100, sub="ray-1cpu")
    scale.merge_results(path, "prepare", {"wall_s": 2.0}, 100, sub="ray-2cpu")
    scale.merge_results(path, "train", {"epoch_s": 5.0}, 100)
    saved = json.loads(Path(path).read_text())
    assert saved["prepare"] == {"ray-1cpu": {"wall_s": 3.0}, "ray-2cpu": {"wall_s": 2.0}}
    assert saved["train"] == {"epoch_s": 5.0} and saved["zones"] == 100
    with pytest.raises(SystemExit, match="figures for 100 zones"):
        scale.merge_results(path, "train", {"epoch_s": 5.0}, 1000)
