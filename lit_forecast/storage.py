"""Shared storage through ``pyarrow.fs``: a local folder by default, any URI on a cluster.

All run artefacts (shards, manifests, resolved configs, forecasts) go through these helpers,
so ``s3://bucket/prefix`` works wherever a local path does. Writes are atomic, so a reader never
sees half a file: on a local or shared file system bytes go to a temporary name and are renamed
into place; an object store has no atomic rename (a "move" is a copy and a delete), but it makes
one object visible only once its upload is complete, so objects are written in place.

S3 clients (pyarrow, botocore, s3fs) read the endpoint and credentials from the environment:
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``. When the
store cannot be reached, or a local folder is full or read-only, the helpers raise
:class:`StorageError` with one readable line.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lit_forecast.errors import StorageError

# What the S3 clients say when the endpoint does not answer: pyarrow (the AWS SDK), botocore
# (TensorBoard's writer: "Could not connect to the endpoint URL", "Read timeout on endpoint URL")
# and aiohttp under s3fs. Narrow on purpose: a dead DDP peer ("Connection reset by peer") is
# not a storage failure and must not be reported as one.
_UNREACHABLE = ("AWS Error NETWORK_CONNECTION", "endpoint URL", "Cannot connect to host")
_OURS = "cannot reach the storage of "  # a StorageError's text, also after Ray re-raises it as text


def is_unreachable(err: BaseException) -> bool:
    """True if ``err`` (or anything in its chain, or its text) says the storage did not answer."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, StorageError) or any(word in str(err) for word in (*_UNREACHABLE, _OURS)):
            return True
        err = err.__cause__ or err.__context__
    return False


# A storage folder that takes no more bytes: (the OS's words, what the folder has become).
_UNWRITABLE = {
    errno.ENOSPC: ("No space left on device", "is full"),
    errno.EDQUOT: ("Disk quota exceeded", "is over its disk quota"),
    errno.EROFS: ("Read-only file system", "has become read-only"),
}
_OURS_UNWRITABLE = "cannot write to the storage of "


def _unwritable_errno(err: BaseException | None) -> int | None:
    """The errno of a full or read-only storage in ``err``'s chain or text (Ray passes worker errors as text)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if getattr(err, "errno", None) in _UNWRITABLE:
            return err.errno
        text = str(err)
        for code, (words, _) in _UNWRITABLE.items():
            if words in text:
                return code
        err = err.__cause__ or err.__context__
    return None


def is_unwritable(err: BaseException) -> bool:
    """True if ``err`` (or anything in its chain, or its text) says the storage is full or read-only."""
    return _unwritable_errno(err) is not None


def unwritable_message(location: str, err: BaseException) -> str:
    """One paragraph: which storage takes no more writes, why, and that the same command resumes."""
    text = str(err)
    if _OURS_UNWRITABLE in text:  # already ours, perhaps inside Ray's text: take it back whole
        return _OURS_UNWRITABLE + text.split(_OURS_UNWRITABLE, 1)[1].splitlines()[0]
    words, state = _UNWRITABLE[_unwritable_errno(err)]
    failed = getattr(err, "filename", None) or next(iter(re.findall(r"'(/[^']+)'", text)), None)
    where = f" writing {failed}" if failed else ""
    return (
        f"{_OURS_UNWRITABLE}{location}: it {state} ({words}{where}). Free space there (or restore write access), "
        "then run the same command again: training resumes from the last complete checkpoint (Ray registers a "
        "checkpoint only once it is written whole)."
    )


def unreachable_message(location: str, err: BaseException) -> str:
    """One line: which storage did not answer, the client's own words, and where to look."""
    if isinstance(err, StorageError):
        return str(err)  # already says it, naming the very object
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next(
        (line for line in lines if any(word in line for word in _UNREACHABLE)),
        lines[0] if lines else type(err).__name__,
    )
    hint = ""
    if location.startswith("s3://"):
        endpoint = (
            os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS's default endpoint"
        )
        hint = f" (endpoint {endpoint}; set AWS_ENDPOINT_URL for an S3-compatible server)"
    return f"{_OURS}{location}{hint}: {detail[:300]}"


def _reachable(function: Callable) -> Callable:
    """Turn a connection failure, or a full or read-only folder, inside ``function(location, ...)``
    into a one-line StorageError."""

    @functools.wraps(function)
    def wrapper(location: str, *args, **kwargs):
        try:
            return function(location, *args, **kwargs)
        except StorageError:
            raise
        except OSError as err:
            if is_unreachable(err):
                raise StorageError(unreachable_message(location, err)) from None
            if is_unwritable(err):
                raise StorageError(unwritable_message(location, err)) from None
            raise

    return wrapper


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` locations other than ``file://``."""
    return "://" in location and not location.startswith("file://")


def absolute(location: str) -> str:
    """Make a local path absolute (Ray workers may run in another directory); URIs pass."""
    if is_uri(location):
        return location.rstrip("/")
    if location.startswith("file://"):
        location = location[len("file://") :]
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


def is_object_store(fs: pafs.FileSystem) -> bool:
    """True for S3, GCS and Azure: keys, not folders, and no atomic rename."""
    return fs.type_name in ("s3", "gcs", "abfs")


@_reachable
def exists(location: str) -> bool:
    """True if a file or folder is there."""
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


@_reachable
def delete(location: str) -> None:
    """Remove a file or a folder tree if it exists."""
    fs, path = resolve(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


@_reachable
def list_dir(location: str) -> list[str]:
    """Names (not paths) of the entries directly inside a folder; empty if it does not exist."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))


@_reachable
def read_bytes(location: str) -> bytes:
    """The whole file."""
    fs, path = resolve(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


@_reachable
def write_bytes(location: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never a part.

    On a file system: a temporary sibling, then a rename over ``location``. On an object store
    an object becomes visible only when its upload completes (one PUT, or the completion of a
    multipart upload), so it is written in place; a copy and delete would be no more atomic.
    """
    fs, path = resolve(location)
    if is_object_store(fs):
        with fs.open_output_stream(path) as stream:
            stream.write(data)  # one call: the upload is all of ``data`` or it does not complete
        return
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


@_reachable
def read_parquet(location: str) -> pa.Table:
    """A Parquet file as an Arrow table."""
    fs, path = resolve(location)
    return pq.read_table(path, filesystem=fs)
