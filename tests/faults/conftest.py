"""An S3-compatible server on 127.0.0.1 (moto) for the object-storage fault tests.

One server per module: starting it takes about a second, but every test gets its own bucket.
The server can be stopped and started again on the same port in the middle of a test; moto
keeps its buckets in this process, so the objects survive, as they would on a real S3 outage.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    """A moto server that tests can stop and start again on the same port."""

    port: int = field(default_factory=_free_port)
    server: object | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        deadline = time.monotonic() + 10
        while True:  # until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"moto server did not start on port {self.port}"
                time.sleep(0.05)

    def stop(self) -> None:
        self.server.stop()
        self.server = None

    def environment(self) -> dict[str, str]:
        """What a user sets to point every S3 client (pyarrow, botocore, s3fs) at this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            # No profile, config or instance metadata of the machine running the tests.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        """A boto3 S3 client for checks made by the test itself."""
        import boto3

        env = self.environment()
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the whole module."""
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (requirements-dev.txt)")
    pytest.importorskip("boto3")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = S3Server()
    server.start()
    yield server
    if server.server is not None:
        server.stop()


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh, empty bucket on the module's server."""
    name = f"runs-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=name)
    return name
