"""A prepared dataset is checked before every reuse: a changed or damaged shard is named and
refused, never trained on.

The manifest records each shard's size and the sha256 of its Parquet footer; reuse compares
both (no full read). A manifest written without them (an older version) is reused after a
schema check of each shard. Through the real code, and through train.py for the user.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_user_mistakes import TINY, TRAIN, refused

from lit_forecast.data import prepare as prep
from lit_forecast.data.manifest import MANIFEST_FILE
from lit_forecast.errors import DataError

START = pd.Timestamp("2024-01-01")
SLOTS = 240
SPLIT_DATES = {
    "train_end": str(START + 160 * pd.Timedelta("30min")),
    "val_end": str(START + 200 * pd.Timedelta("30min")),
}
SHARD_COLUMNS = "series_id, start, values, window_starts"


@pytest.fixture
def dataset(tmp_path, synthetic_csv, make_config):
    """(config, data folder, manifest) of a freshly prepared two-shard dataset."""
    csv = synthetic_csv(np.arange(SLOTS) % 48 + 100.0)
    config = make_config(csv, **SPLIT_DATES)
    folder = tmp_path / "data"
    return config, folder, prep.prepare(config, str(folder))


def footer_sha256(path: Path) -> str:
    """sha256 of a Parquet file's footer (metadata, its length and the closing magic), read from its bytes."""
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little")
    assert data[-4:] == b"PAR1"
    return hashlib.sha256(data[-8 - length :]).hexdigest()


def forecast_table() -> pa.Table:
    """What infer.py writes: another Parquet file a user could put in the wrong place."""
    return pa.table({"series_id": ["0"] * 3, "cutoff": ["2024-01-05"] * 3, "q0.5": [1.0, 2.0, 3.0]})


def damaged(folder: Path, *lines: str) -> str:
    """The exact message for a dataset whose files fail the check with ``lines``."""
    return (
        f"the prepared dataset in {folder} was changed after it was written:\n  "
        + "\n  ".join(lines)
        + f"\nIts files are derived from the source data: delete the folder {folder} and run the same command "
        "again to prepare it anew."
    )


def test_manifest_records_every_shards_size_and_footer(dataset):
    config, folder, manifest = dataset
    assert sorted(manifest.shard_checks) == sorted(manifest.files) == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet", "val.parquet"]  # fmt: skip
    for name, check in manifest.shard_checks.items():
        assert check.bytes == (folder / name).stat().st_size
        assert check.footer_sha256 == footer_sha256(folder / name)
    on_disk = json.loads((folder / MANIFEST_FILE).read_text())["shard_checks"]
    assert on_disk["val.parquet"] == {
        "bytes": manifest.shard_checks["val.parquet"].bytes,
        "footer_sha256": manifest.shard_checks["val.parquet"].footer_sha256,
    }
    again = prep.prepare(config, str(folder))
    assert again.reused and again.shard_checks == manifest.shard_checks


def test_a_shard_replaced_by_another_parquet_file_is_refused_by_name(dataset):
    config, folder, _ = dataset
    pq.write_table(forecast_table(), folder / "val.parquet")
    replaced = (folder / "val.parquet").read_bytes()
    size = len(replaced)
    with pytest.raises(DataError) as err:
        prep.prepare(config, str(folder))
    written = dataset[2].shard_checks["val.parquet"].bytes
    assert str(err.value) == damaged(
        folder, f"val.parquet: {size:,} bytes, not the {written:,} written (truncated or replaced)"
    )
    assert (folder / "val.parquet").read_bytes() == replaced  # nothing the user put there is overwritten


def test_a_truncated_shard_is_refused_by_name(dataset):
    config, folder, manifest = dataset
    shard = folder / "train-00001-of-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError) as err:
        prep.prepare(config, str(folder))
    written = manifest.shard_checks[shard.name].bytes
    assert str(err.value) == damaged(
        folder, f"{shard.name}: 100 bytes, not the {written:,} written (truncated or replaced)"
    )


def test_a_shard_of_the_recorded_size_with_another_footer_is_refused(dataset):
    config, folder, _ = dataset
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    raw["shard_checks"]["val.parquet"]["footer_sha256"] = "0" * 64  # as if the file had been edited in place
    (folder / MANIFEST_FILE).write_text(json.dumps(raw, indent=2))
    with pytest.raises(DataError) as err:
        prep.prepare(config, str(folder))
    assert str(err.value) == damaged(
        folder, "val.parquet: its contents differ from what was written (edited or replaced)"
    )


def test_every_damaged_shard_is_named_at_once(dataset):
    config, folder, manifest = dataset
    for name in manifest.files:
        (folder / name).write_bytes(b"not parquet")
    with pytest.raises(DataError) as err:
        prep.prepare(config, str(folder))
    lines = [
        f"{n}: 11 bytes, not the {manifest.shard_checks[n].bytes:,} written (truncated or replaced)"
        for n in manifest.files
    ]
    assert str(err.value) == damaged(folder, *lines)


def test_a_missing_shard_is_prepared_again(dataset, caplog):
    config, folder, manifest = dataset
    (folder / "val.parquet").unlink()
    with caplog.at_level(logging.INFO, logger="lit_forecast"):
        again = prep.prepare(config, str(folder))
    assert not again.reused and f"dataset in {folder} lacks val.parquet: preparing again" in caplog.text
    assert again.shard_checks == manifest.shard_checks  # the same bytes as before


def without_checks(folder: Path) -> None:
    """Rewrite the manifest as an older version wrote it: no shard_checks."""
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    del raw["shard_checks"]
    (folder / MANIFEST_FILE).write_text(json.dumps(raw, indent=2))


def test_a_manifest_without_shard_checks_is_reused_after_a_schema_check(dataset, caplog):
    config, folder, _ = dataset
    without_checks(folder)
    with caplog.at_level(logging.INFO, logger="lit_forecast"):
        again = prep.prepare(config, str(folder))
    assert again.reused and again.shard_checks == {}
    assert "records no shard sizes (an older version wrote it): checked the shards' schemas only" in caplog.text

    pq.write_table(forecast_table(), folder / "val.parquet")
    with pytest.raises(DataError) as err:
        prep.prepare(config, str(folder))
    assert str(err.value) == damaged(
        folder, f"val.parquet: holds columns series_id, cutoff, q0.5, not a shard's ({SHARD_COLUMNS})"
    )

    shard = folder / "train-00000-of-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:-20])
    with pytest.raises(DataError) as err:
        prep.prepare(config, str(folder))
    assert str(err.value) == damaged(
        folder,
        "train-00000-of-00002.parquet: not a readable Parquet file (truncated or replaced)",
        f"val.parquet: holds columns series_id, cutoff, q0.5, not a shard's ({SHARD_COLUMNS})",
    )


# -- through train.py -----------------------------------------------------------------------------


def test_train_py_refuses_a_run_whose_shard_was_overwritten(tmp_path, synthetic_csv, capsys, monkeypatch):
    from lit_forecast.training import ray_train

    csv = synthetic_csv(np.arange(480) % 48 + 100.0)
    argv = ["--config", TINY, "--data", str(csv), "--storage", str(tmp_path / "storage"), "--name", "run",
            "--set", "data.train_end=2024-01-07", "--set", "data.val_end=2024-01-09"]  # fmt: skip
    TRAIN([*argv, "--prepare-only"])
    capsys.readouterr()
    data = tmp_path / "storage" / "run" / "data"
    pq.write_table(forecast_table(), data / "val.parquet")

    message = refused(TRAIN, [*argv, "--prepare-only"], capsys, str(data), "val.parquet", "delete the folder")
    assert message.startswith(f"error: the prepared dataset in {data} was changed after it was written:")
    monkeypatch.setattr(ray_train, "fit", lambda *a, **k: pytest.fail("training started on a damaged dataset"))
    refused(TRAIN, argv, capsys, str(data), "val.parquet", "delete the folder")
    assert not (tmp_path / "storage" / "run" / "checkpoints").exists()
