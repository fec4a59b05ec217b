"""Fetching data files: mirrors tried in order, SHA-256 of the decompressed contents checked,
files saved atomically. A dataset module (mnist.py) names its files, sums and mirrors."""
from __future__ import annotations

import gzip
import hashlib
import os
import sys
import urllib.request
import zlib
from typing import Callable, Sequence

from ..files import FileFormatError, atomic_write

GZIP_MAGIC = b"\x1f\x8b"
_urlopen = urllib.request.urlopen   # the network call; tests replace it


class DataError(FileFormatError):
    """A data file is missing, corrupt or cannot be downloaded; the message names the file and
    says what to do. DataError.NotFound (also a FileNotFoundError) for a missing file."""


def fetch_url(url: str, timeout: float) -> bytes:
    """GET url and return its body (through the module-level _urlopen)."""
    req = urllib.request.Request(url, headers={"User-Agent": "minivit"})
    with _urlopen(req, timeout=timeout) as r:
        return r.read()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gunzip_if_needed(data: bytes, where: str, fix: str) -> bytes:
    """The bytes, decompressed when they start with the gzip magic 1f 8b (whatever the name)."""
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{where}: broken gzip data ({e}); {fix}") from e


def write_file(path: str, data: bytes) -> None:
    """files.atomic_write, with an error that says where to put the data instead."""
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        raise DataError(f"cannot write into {os.path.dirname(path) or '.'} ({e}); pass --data DIR "
                        f"(or set MINIVIT_DATA=DIR) to a writable folder") from e


def download_verified(name: str, want_sha256: str, data_dir: str, urls: Sequence[str],
                      fetch: Callable[[str, float], bytes], timeout: float,
                      verbose: bool) -> bytes:
    """Fetch the first of urls whose (decompressed) contents have the wanted SHA-256, save it in
    data_dir under name (+ .gz when it came compressed) and return the decompressed bytes.
    Raises DataError listing every url's failure."""
    errors = []
    for url in urls:
        if verbose:
            print(f"minivit: downloading {url}", file=sys.stderr)
        try:
            body = fetch(url, timeout)
            raw = gunzip_if_needed(body, url, "try another mirror")
            got = sha256(raw)
            if got != want_sha256:
                raise DataError(f"SHA-256 {got}, expected {want_sha256}")
        except Exception as e:   # any failure of one mirror: try the next
            errors.append(f"  {url}: {type(e).__name__}: {e}")
            continue
        write_file(os.path.join(data_dir, name + (".gz" if body[:2] == GZIP_MAGIC else "")), body)
        return raw
    raise DataError(f"could not download {name} from any mirror:\n" + "\n".join(errors))
