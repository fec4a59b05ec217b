"""MNIST: the IDX reader, the files' SHA-256 sums and mirrors, and the dataset's Preprocessing.

The four MNIST files are looked up in a data folder (``--data DIR``, else the env var
MINIVIT_DATA, else ``~/.cache/minivit/mnist``) as NAME or NAME.gz, downloaded from the first
mirror that answers when missing (download.py), and always checked against the SHA-256 of their
*decompressed* contents, so any copy (recompressed or not) is accepted and nothing else is.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import zlib
from typing import Callable, NamedTuple, Sequence, Union

import numpy as np

from ..config import Preprocessing
from ..files import MAX_DIMS, check_file, indexable
from .batches import Dataset
from .download import GZIP_MAGIC, DataError, download_verified, fetch_url, sha256

PathLike = Union[str, "os.PathLike[str]"]

MNIST_FILES = {   # name -> SHA-256 of the decompressed file
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS = (   # tried in order; each serves NAME.gz
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_MEAN = 0.1307   # of pixel / 255 over the training set
MNIST_STD = 0.3081
PREPROCESSING = Preprocessing(mean=[MNIST_MEAN], std=[MNIST_STD], image_size=28, channels=1,
                              class_names=[str(k) for k in range(10)])

_FIX = "delete it and re-download, or pass --data DIR (or set MINIVIT_DATA=DIR) with good copies"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32,
               0x0D: np.float32, 0x0E: np.float64}

class MNIST(NamedTuple):
    x_train: np.ndarray   # (60000, 28, 28) uint8
    y_train: np.ndarray   # (60000,) uint8
    x_test: np.ndarray    # (10000, 28, 28) uint8
    y_test: np.ndarray    # (10000,) uint8


def default_data_dir() -> str:
    """$MINIVIT_DATA if set, else ~/.cache/minivit/mnist."""
    env = os.environ.get("MINIVIT_DATA")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "minivit", "mnist")


# ---- IDX format ----------------------------------------------------------------------------

def parse_idx(data: bytes, where: str = "<bytes>") -> np.ndarray:
    """Parse raw IDX bytes: 00 00 <dtype code> <ndim>, ndim big-endian uint32 dims, payload."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{where}: not an IDX file (magic {data[:4].hex() or 'empty'}, expected "
                        f"00 00 <dtype> <ndim>); {_FIX}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{where}: unknown IDX dtype code 0x{code:02x} (known: "
                        f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}); {_FIX}")
    if ndim == 0 or ndim > MAX_DIMS:
        raise DataError(f"{where}: IDX header gives {ndim} dimensions (1 to {MAX_DIMS} can be "
                        f"read); {_FIX}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: truncated IDX header ({len(data)} bytes, need {header}); {_FIX}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[code]).newbyteorder(">")
    want = math.prod(dims) * dtype.itemsize              # Python ints: no overflow
    got = len(data) - header
    if got != want:
        what = "truncated" if got < want else "has extra bytes"
        raise DataError(f"{where}: IDX payload {what}: {got} bytes after the header, expected "
                        f"{want} for shape {dims} of {dtype.name}; {_FIX}")
    if not indexable(dims, dtype.itemsize):               # sizes around a 0
        raise DataError(f"{where}: IDX header gives the shape {dims}, which no array can have "
                        f"(its sizes multiply past what an index can hold); {_FIX}")
    arr = np.frombuffer(data, dtype, want // dtype.itemsize, header).reshape(dims)
    if dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{where}: the IDX data holds NaN or inf; {_FIX}")
    return arr.astype(dtype.newbyteorder("="))   # native byte order, writable copy


def idx_contents(data: bytes, where: str) -> bytes:
    """The IDX bytes of a file's contents, decompressed when they start with the gzip magic
    (whatever the name). A .gz is inflated no further than the IDX header it starts with
    declares (and one byte more, to see extra data): a damaged or hostile file cannot make
    minivit inflate more than its header asks for, and never more than deflate's bound."""
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
            head = _read_upto(g, 4)
            if len(head) == 4:
                head += _read_upto(g, 4 * head[3])
            want = _declared(head)
            return head + (_read_upto(g, want - len(head) + 1) if want is not None else b"")
    except (OSError, EOFError, zlib.error) as e:          # gzip.BadGzipFile is an OSError
        raise DataError(f"{where}: broken gzip data ({e}); {_FIX}") from e


def _read_upto(f, n: int, chunk: int = 1 << 20) -> bytes:
    """Up to n bytes of f, read a chunk at a time: only what f really holds is allocated."""
    parts, got = [], 0
    while got < n:
        part = f.read(min(chunk, n - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _declared(head: bytes):
    """The size in bytes (header + payload) an IDX header declares, or None if it is no IDX
    header (parse_idx then says what is wrong)."""
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES or not head[3] \
            or len(head) < 4 + 4 * head[3]:
        return None
    dims = np.frombuffer(head, ">u4", head[3], 4)
    itemsize = np.dtype(_IDX_DTYPES[head[2]]).itemsize
    return 4 + 4 * head[3] + math.prod(int(d) for d in dims) * itemsize


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed (detected from its first bytes); DataError
    (DataError.NotFound when missing) for a bad file."""
    path = check_file(path, DataError, "an IDX file", _FIX)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check that it is readable") from e
    return parse_idx(idx_contents(data, path), path)


# ---- the files -----------------------------------------------------------------------------

def _find(data_dir: str, name: str) -> str | None:
    """data_dir/NAME, else data_dir/NAME.gz, else None."""
    for cand in (name, name + ".gz"):
        path = os.path.join(data_dir, cand)
        if os.path.isfile(path):
            return path
    return None


def _download(name: str, data_dir: str, mirrors: Sequence[str], fetch: Callable,
              timeout: float, verbose: bool) -> bytes:
    """NAME.gz from the first mirror whose contents verify, saved in data_dir; the raw bytes."""
    urls = [m.rstrip("/") + "/" + name + ".gz" for m in mirrors]
    try:
        return download_verified(name, MNIST_FILES[name], data_dir, urls, fetch, timeout, verbose)
    except DataError as e:
        if "from any mirror" not in str(e):
            raise
        raise DataError(
            f"{e}\nDownload the 4 files ({', '.join(f + '.gz' for f in MNIST_FILES)}) by hand "
            f"from one of these mirrors into a folder, then pass --data DIR or set "
            f"MINIVIT_DATA=DIR (.gz or decompressed both work)") from None


def _load_file(name: str, data_dir: str, mirrors: Sequence[str], fetch: Callable,
               timeout: float, verbose: bool) -> np.ndarray:
    """One verified MNIST file as an array: read it from data_dir, or download it there."""
    path = _find(data_dir, name)
    if path is None:
        raw = _download(name, data_dir, mirrors, fetch, timeout, verbose)
        return parse_idx(raw, os.path.join(data_dir, name))
    with open(path, "rb") as f:
        raw = idx_contents(f.read(), path)
    got, want = sha256(raw), MNIST_FILES[name]
    if got != want:
        raise DataError(f"{path}: SHA-256 of the decompressed contents is {got}, expected "
                        f"{want} for {name}; the file is corrupt or not MNIST; {_FIX}")
    return parse_idx(raw, path)


def _check_pair(x: np.ndarray, y: np.ndarray, split: str) -> None:
    """Images (N, H, W) uint8 and labels (N,) uint8 in 0..9 that agree in N."""
    if x.ndim != 3 or y.ndim != 1 or x.dtype != np.uint8 or y.dtype != np.uint8:
        raise DataError(f"MNIST {split}: expected uint8 images (N, H, W) and labels (N,), got "
                        f"{x.dtype} {x.shape} and {y.dtype} {y.shape}; {_FIX}")
    if len(x) != len(y):
        raise DataError(f"MNIST {split}: {len(x)} images but {len(y)} labels; {_FIX}")
    if y.size and y.max() > 9:
        raise DataError(f"MNIST {split}: label {int(y.max())} outside 0..9; {_FIX}")


def load_mnist(data_dir: PathLike | None = None, download: bool = True, *,
               mirrors: Sequence[str] | None = None,
               fetch: Callable[[str, float], bytes] | None = None,
               timeout: float = 30.0, verbose: bool = True) -> MNIST:
    """(x_train (60000,28,28), y_train (60000,), x_test (10000,28,28), y_test (10000,)), uint8.

    Files are read from data_dir (default: default_data_dir()) as NAME or NAME.gz; missing
    ones are downloaded there when `download` (fetch(url, timeout) -> bytes, tried over
    `mirrors` in order, saved atomically). Every file is checked against MNIST_FILES."""
    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    missing = [n for n in MNIST_FILES if _find(data_dir, n) is None]
    if missing and not download:
        raise DataError(f"MNIST files missing in {data_dir}: {', '.join(missing)} (looked for "
                        f"NAME and NAME.gz); download them into a folder and pass --data DIR or "
                        f"set MINIVIT_DATA=DIR, or allow downloading")
    mirrors = MIRRORS if mirrors is None else tuple(mirrors)
    fetch = fetch_url if fetch is None else fetch
    arrays = [_load_file(n, data_dir, mirrors, fetch, timeout, verbose) for n in MNIST_FILES]
    out = MNIST(*arrays)
    _check_pair(out.x_train, out.y_train, "train")
    _check_pair(out.x_test, out.y_test, "test")
    return out


def mnist_dataset(data_dir: PathLike | None = None, limit_train: int | None = None,
                  limit_test: int | None = None) -> Dataset:
    """MNIST as a Dataset (uint8 (M, 28, 28) images) with its Preprocessing; limit_* keep only
    the first N images of a split."""
    x_train, y_train, x_test, y_test = load_mnist(data_dir)
    return Dataset(x_train[:limit_train], y_train[:limit_train], x_test[:limit_test],
                   y_test[:limit_test], dataclasses.replace(PREPROCESSING))
