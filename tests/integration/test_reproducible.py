"""Two runs of the same config and seed on the same machine train the same model.

Both go through ``python train.py`` with two DDP workers (configs/tiny.yaml) on the same
synthetic series: every epoch's ``val/mae`` and training loss must be equal to the bit, and so
must the last checkpoint's weights. (Across machines they may differ: see the README.)
"""

from __future__ import annotations

import pytest
import torch
from test_ray_train import checkpoints, command, read_scalars, run

pytestmark = [pytest.mark.ray]  # about a minute and a half on 2 cores


@pytest.mark.timeout(420)
def test_same_config_and_seed_give_the_same_val_mae_every_epoch(taxi_like_csv, tmp_path):
    for name in ("first", "second"):
        run(command(taxi_like_csv, tmp_path, name, 3, "--set", "train.seed=5"), timeout=200)
    first, second = (read_scalars(tmp_path / name / "tensorboard") for name in ("first", "second"))
    assert [step for step, _ in first["val/mae"]] == [step for step, _ in second["val/mae"]]
    assert len(first["val/mae"]) == 3
    assert first["val/mae"] == second["val/mae"]  # exact: same numbers, same epochs
    assert first["train/loss_epoch"] == second["train/loss_epoch"]
    weights = [
        torch.load(checkpoints(tmp_path / name)[-1], map_location="cpu", weights_only=True)["state_dict"]
        for name in ("first", "second")
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])

    # A third run with another seed trains another model: the comparison above can fail.
    run(command(taxi_like_csv, tmp_path, "other", 1, "--set", "train.seed=6"), timeout=200)
    assert read_scalars(tmp_path / "other" / "tensorboard")["val/mae"][0] != first["val/mae"][0]
