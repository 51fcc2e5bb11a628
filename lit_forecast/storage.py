"""Shared storage through ``pyarrow.fs``: a local folder by default, any URI on a cluster.

All run artefacts (shards, manifests, resolved configs, forecasts) go through these helpers,
so ``s3://bucket/prefix`` works wherever a local path does. Writes are atomic: bytes go to a
temporary name first and are moved into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lit_forecast.errors import StorageError


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` locations other than ``file://``."""
    return "://" in location and not location.startswith("file://")


def absolute(location: str) -> str:
    """Make a local path absolute (Ray workers may run in another directory); URIs pass."""
    if is_uri(location):
        return location.rstrip("/")
    if location.startswith("file://"):
        location = location[len("file://"):]
    return os.path.abspath(os.path.expanduser(location))


def join(location: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with '/'."""
    return "/".join([location.rstrip("/"), *[p.strip("/") for p in parts]])


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and in-filesystem path for a local path or URI (StorageError if none fits)."""
    try:
        return pafs.FileSystem.from_uri(absolute(location))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:  # foo://x, s3:// without a bucket
        raise StorageError(
            f"{location}: no filesystem for this location ({str(err).splitlines()[0]}); use a local path or a "
            "pyarrow.fs URI such as s3://bucket/path, gs://bucket/path or hdfs://host/path"
        ) from None


def exists(location: str) -> bool:
    """True if a file or folder is there."""
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def delete(location: str) -> None:
    """Remove a file or a folder tree if it exists."""
    fs, path = resolve(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def list_dir(location: str) -> list[str]:
    """Names (not paths) of the entries directly inside a folder; empty if it does not exist."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))


def read_bytes(location: str) -> bytes:
    """The whole file."""
    fs, path = resolve(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(location: str, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then move it over ``location``."""
    fs, path = resolve(location)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(tmp) as stream:
            stream.write(data)
        fs.move(tmp, path)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


def read_json(location: str) -> Any:
    """A JSON file, parsed."""
    return json.loads(read_bytes(location))


def write_json(location: str, obj: Any) -> None:
    """``obj`` as indented JSON, atomically."""
    write_bytes(location, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_text(location: str, text: str) -> None:
    """UTF-8 text, atomically."""
    write_bytes(location, text.encode())


def read_text(location: str) -> str:
    """A UTF-8 text file."""
    return read_bytes(location).decode()


def write_parquet(location: str, table: pa.Table) -> None:
    """Write a Parquet file atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_bytes(location, sink.getvalue().to_pybytes())


def read_parquet(location: str) -> pa.Table:
    """A Parquet file as an Arrow table."""
    fs, path = resolve(location)
    return pq.read_table(path, filesystem=fs)
