"""lit_forecast.storage against an S3 server (moto on 127.0.0.1): atomic writes, clear outages.

No Ray here: these run in a second or two.
"""

from __future__ import annotations

import time

import pytest

from lit_forecast import storage
from lit_forecast.errors import CheckpointError
from lit_forecast.layout import best_checkpoint


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process's S3 clients point at the moto server, through the variables users set."""
    for key, value in s3_server.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return s3_server


def test_writes_go_straight_to_their_key(s3_env, bucket):
    location = f"s3://{bucket}/runs/r/data/manifest.json"
    storage.write_json(location, {"a": 1})
    storage.write_json(location, {"a": 2})  # replaced in one PUT: readers see 1 or 2, never a part
    assert storage.read_json(location) == {"a": 2}
    # No temporary object was left behind, and none was copied and deleted (S3 has no rename).
    assert s3_env.keys(bucket, "runs/") == ["runs/r/data/manifest.json"]
    assert storage.list_dir(f"s3://{bucket}/runs/r/data") == ["manifest.json"]


@pytest.mark.timeout(90)
def test_an_unreachable_endpoint_is_one_clear_storage_error(s3_env, bucket):
    location = f"s3://{bucket}/runs/r/config.yaml"
    storage.write_text(location, "x: 1\n")
    s3_env.stop()
    try:
        started = time.monotonic()
        with pytest.raises(storage.StorageError) as caught:
            storage.exists(location)
        assert time.monotonic() - started < 30  # pyarrow's retries, not a hang
        with pytest.raises(storage.StorageError):
            storage.write_text(location, "x: 2\n")
    finally:
        s3_env.start()
    message = str(caught.value)
    assert message.startswith(f"cannot reach the storage of {location} (endpoint {s3_env.endpoint};")
    assert "\n" not in message and "NETWORK_CONNECTION" in message
    assert storage.read_text(location) == "x: 1\n"  # the failed write changed nothing


def test_peer_and_unrelated_errors_are_not_storage_outages():
    assert not storage.is_unreachable(
        RuntimeError("[/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:4312")
    )
    assert not storage.is_unreachable(FileNotFoundError("runs/x/config.yaml"))
    assert storage.is_unreachable(
        OSError("When reading 'k' in bucket 'b': AWS Error NETWORK_CONNECTION during GetObject operation")
    )
    wrapped = RuntimeError("worker failed")
    wrapped.__cause__ = OSError('Could not connect to the endpoint URL: "http://127.0.0.1:9000/b/k"')
    assert storage.is_unreachable(wrapped)


def test_an_unfinished_run_uses_its_newest_complete_checkpoint(s3_env, bucket):
    run = f"s3://{bucket}/runs/r"
    storage.write_bytes(f"{run}/checkpoint_2024-01-01_00-00-01.000000/checkpoint.ckpt", b"old")
    storage.write_bytes(f"{run}/checkpoint_2024-01-01_00-00-02.000000/checkpoint.ckpt", b"new")
    # An upload cut short: Ray's copy made the folder marker, the object never completed.
    s3_env.client().put_object(Bucket=bucket, Key="runs/r/checkpoint_2024-01-01_00-00-03.000000/", Body=b"")
    assert best_checkpoint(run) == f"{run}/checkpoint_2024-01-01_00-00-02.000000/checkpoint.ckpt"

    empty = f"s3://{bucket}/runs/empty"
    storage.write_text(f"{empty}/config.yaml", "x: 1\n")
    with pytest.raises(CheckpointError, match="holds no checkpoint_"):
        best_checkpoint(empty)
