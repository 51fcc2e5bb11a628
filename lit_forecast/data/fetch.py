"""Where the data comes from: a URL (downloaded once into a checksum-verified cache), a local
path, a ``file://`` URI or any pyarrow.fs URI, resolved to a readable file or folder with the
sha256 that identifies its bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from lit_forecast import storage
from lit_forecast.config import DataConfig
from lit_forecast.data import readers
from lit_forecast.data.readers import MAX_SHOWN
from lit_forecast.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Source:
    """The data resolved to something readable, with its checksum.

    ``sha256``: of the file's bytes; for a folder, of its member list: sha256 over one line
    ``<path below the folder>\\0<size in bytes>\\0<sha256 of the file>\\n`` per data file, in
    path order (see :func:`folder_sha256`).
    """

    location: str  # local path or pyarrow.fs URI (a file or a folder)
    sha256: str
    origin: str  # what the user asked for (URL, path or URI)


def cache_dir(config: DataConfig) -> Path:
    """Where downloads are kept: $LIT_FORECAST_CACHE, else data.cache_dir."""
    return Path(os.environ.get("LIT_FORECAST_CACHE") or config.cache_dir).expanduser()


def sha256_of(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def fetch(config: DataConfig) -> Source:
    """Resolve ``config.source`` to a readable file or folder, downloading URLs into the cache once.

    With ``data.sha256`` set, the bytes must match it, wherever they come from.
    """
    origin = config.source
    if origin.startswith(("http://", "https://")):
        return _fetch_url(origin, config)
    location = local_or_uri(origin)
    fs, path = storage.resolve(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data file not found: {location}")
    if info.type == pafs.FileType.Directory:
        members, others = readers.list_data_files(fs, path)
        if not members:
            found = f"; it holds {others[:MAX_SHOWN]}" if others else " (it is empty)"
            raise DataError(f"{location}: no CSV or Parquet files (.csv, .csv.gz, .parquet, .pq) in this folder{found}")
        digest = folder_sha256(fs, path, members)
    else:
        digest = file_sha256(fs, path)
    _check_sha256(origin, digest, config)
    return Source(location, digest, origin)


def local_or_uri(origin: str) -> str:
    """A ``file://`` URI as a local path, a local path made absolute, other URIs unchanged."""
    if origin.startswith("file:"):
        parsed = urllib.parse.urlparse(origin)
        return os.path.abspath(urllib.request.url2pathname(parsed.path))
    if storage.is_uri(origin):
        return origin
    return str(Path(origin).expanduser().resolve())


def file_sha256(fs: pafs.FileSystem, path: str) -> str:
    """Hex sha256 of one file's bytes, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path, compression=None) as stream:
        while chunk := stream.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(fs: pafs.FileSystem, root: str, members: list[pafs.FileInfo]) -> str:
    """sha256 over ``<relative path>\\0<size>\\0<sha256 of contents>\\n`` for each member, in path order.

    Renaming, resizing or editing any data file changes it; files the loader skips do not.
    """
    digest = hashlib.sha256()
    for info in members:
        line = f"{readers.relative(root, info.path)}\0{info.size}\0{file_sha256(fs, info.path)}\n"
        digest.update(line.encode())
    return digest.hexdigest()


def _check_sha256(origin: str, digest: str, config: DataConfig) -> None:
    if config.sha256 is not None and digest != config.sha256:
        raise DataError(
            f"{origin}: sha256 is {digest}, expected data.sha256={config.sha256}; refusing to use it "
            f"(set data.sha256 to the new value, or to null to accept any bytes)"
        )


def url_cache_path(url: str, config: DataConfig) -> Path:
    """Where ``url`` is cached: a folder named by a short hash of the whole URL, then its file name.

    Two URLs with the same file name (``.../a/nyc.csv``, ``.../b/nyc.csv``) never share a file.
    """
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]) or "download"
    return cache_dir(config) / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _fetch_url(url: str, config: DataConfig) -> Source:
    target = url_cache_path(url, config)
    # Older versions cached by file name alone ($LIT_FORECAST_CACHE/nyc_taxi.csv; CI still seeds
    # it there). Such a file is trusted only when its bytes match a configured sha256.
    legacy = cache_dir(config) / target.name
    candidates = [target] + ([legacy] if config.sha256 is not None else [])
    for cached in candidates:
        if cached.is_file():
            digest = file_sha256(pafs.LocalFileSystem(), str(cached))
            if config.sha256 is None or digest == config.sha256:
                log.info("using cached %s", cached)
                return Source(str(cached), digest, url)
            log.warning("cached %s has sha256 %s, expected %s: not using it", cached, digest, config.sha256)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        legacy_hint = f" or {legacy}" if config.sha256 is not None else ""
        raise DataError(
            f"could not download {url} ({err}). Without network, put the file at {target}{legacy_hint} "
            f"(or set LIT_FORECAST_CACHE to a folder holding it), or pass a local copy with --data PATH"
        ) from None
    digest = sha256_of(data)
    if config.sha256 is not None and digest != config.sha256:
        raise DataError(f"{url}: sha256 is {digest}, expected {config.sha256}; refusing to use it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(target)
    return Source(str(target), digest, url)
