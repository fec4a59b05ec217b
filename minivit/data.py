"""MNIST: IDX reader, verified download, and a seeded host-side batch iterator.

The four MNIST files are looked up in a data folder (``--data DIR``, else the env var
MINIVIT_DATA, else ``~/.cache/minivit/mnist``) as NAME or NAME.gz, downloaded from the first
mirror that answers when missing, and always checked against the SHA-256 of their
*decompressed* contents, so any copy (recompressed or not) is accepted and nothing else is.

Images stay uint8 on the host. BatchIterator gathers one batch at a time, optionally shifts
it by up to +-2 pixels, moves it to the backend as uint8 and normalizes it there.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import sys
import urllib.request
import zlib
from typing import Callable, Iterator, NamedTuple, Sequence, Union

import numpy as np

from . import backend

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

_FIX = "delete it and re-download, or pass --data DIR (or set MINIVIT_DATA=DIR) with good copies"
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32,
               0x0D: np.float32, 0x0E: np.float64}
_urlopen = urllib.request.urlopen   # the network call; tests replace it


class DataError(ValueError):
    """A data file is missing, corrupt or cannot be downloaded; the message says what to do."""


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

def _gunzip_if_needed(data: bytes, where: str) -> bytes:
    """The bytes, decompressed when they start with the gzip magic 1f 8b (whatever the name)."""
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{where}: broken gzip data ({e}); {_FIX}") from e


def parse_idx(data: bytes, where: str = "<bytes>") -> np.ndarray:
    """Parse raw IDX bytes: 00 00 <dtype code> <ndim>, ndim big-endian uint32 dims, payload."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{where}: not an IDX file (magic {data[:4].hex() or 'empty'}, expected "
                        f"00 00 <dtype> <ndim>); {_FIX}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{where}: unknown IDX dtype code 0x{code:02x} (known: "
                        f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}); {_FIX}")
    if ndim == 0:
        raise DataError(f"{where}: IDX header gives 0 dimensions; {_FIX}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: truncated IDX header ({len(data)} bytes, need {header}); {_FIX}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[code]).newbyteorder(">")
    want = int(np.prod(dims)) * dtype.itemsize
    got = len(data) - header
    if got != want:
        what = "truncated" if got < want else "has extra bytes"
        raise DataError(f"{where}: IDX payload {what}: {got} bytes after the header, expected "
                        f"{want} for shape {dims} of {dtype.name}; {_FIX}")
    arr = np.frombuffer(data, dtype, want // dtype.itemsize, header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))   # native byte order, writable copy


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed (detected from its first bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    return parse_idx(_gunzip_if_needed(data, str(path)), str(path))


# ---- download and verification -------------------------------------------------------------

def fetch_url(url: str, timeout: float) -> bytes:
    """GET url and return its body (through the module-level _urlopen)."""
    req = urllib.request.Request(url, headers={"User-Agent": "minivit"})
    with _urlopen(req, timeout=timeout) as r:
        return r.read()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _find(data_dir: str, name: str) -> str | None:
    """data_dir/NAME, else data_dir/NAME.gz, else None."""
    for cand in (name, name + ".gz"):
        path = os.path.join(data_dir, cand)
        if os.path.isfile(path):
            return path
    return None


def _write_atomic(path: str, data: bytes) -> None:
    """checkpoint.atomic_write, with an error that says where to put the data instead."""
    from .checkpoint import atomic_write
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        raise DataError(f"cannot write into {os.path.dirname(path) or '.'} ({e}); pass --data DIR "
                        f"(or set MINIVIT_DATA=DIR) to a writable folder") from e


def _download(name: str, data_dir: str, mirrors: Sequence[str], fetch: Callable,
              timeout: float, verbose: bool) -> bytes:
    """Fetch NAME.gz from the first mirror whose contents verify; save it; return raw bytes."""
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name + ".gz"
        if verbose:
            print(f"minivit: downloading {url}", file=sys.stderr)
        try:
            body = fetch(url, timeout)
            raw = _gunzip_if_needed(body, url)
            got = _sha256(raw)
            if got != MNIST_FILES[name]:
                raise DataError(f"SHA-256 {got}, expected {MNIST_FILES[name]}")
        except Exception as e:   # any failure of one mirror: try the next
            errors.append(f"  {url}: {type(e).__name__}: {e}")
            continue
        dest = os.path.join(data_dir, name + (".gz" if body[:2] == _GZIP_MAGIC else ""))
        _write_atomic(dest, body)
        return raw
    raise DataError(
        f"could not download {name}.gz from any mirror:\n" + "\n".join(errors) +
        f"\nDownload the 4 files ({', '.join(f + '.gz' for f in MNIST_FILES)}) by hand from one "
        f"of these mirrors into a folder, then pass --data DIR or set MINIVIT_DATA=DIR "
        f"(.gz or decompressed both work)")


def _load_file(name: str, data_dir: str, mirrors: Sequence[str], fetch: Callable,
               timeout: float, verbose: bool) -> np.ndarray:
    """One verified MNIST file as an array: read it from data_dir, or download it there."""
    path = _find(data_dir, name)
    if path is None:
        raw = _download(name, data_dir, mirrors, fetch, timeout, verbose)
        return parse_idx(raw, os.path.join(data_dir, name))
    with open(path, "rb") as f:
        raw = _gunzip_if_needed(f.read(), path)
    got, want = _sha256(raw), MNIST_FILES[name]
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


# ---- normalization and batches -------------------------------------------------------------

def normalize(x, dtype="float32", mean=MNIST_MEAN, std=MNIST_STD, xp=None):
    """(x / 255 - mean) / std as float (B, C, H, W) from uint8 (B, H, W) or (B, C, H, W).

    mean and std are scalars or one value per channel; x stays on its own backend."""
    xp = backend.xp_of(x) if xp is None else xp
    dtype = _float_dtype(dtype)
    if x.ndim == 3:
        x = x[:, None]                                                # (B, 1, H, W)
    if x.ndim != 4:
        raise ValueError(f"images must be (B, H, W) or (B, C, H, W), got shape {x.shape}; "
                         f"move a channels-last axis first with np.moveaxis(x, -1, 1)")
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean.size not in (1, x.shape[1]) or std.size not in (1, x.shape[1]):
        raise ValueError(f"mean/std have {mean.size}/{std.size} values for {x.shape[1]} "
                         f"channels; give one value or one per channel")
    scale = xp.asarray((1.0 / (255.0 * std)).reshape(1, -1, 1, 1), dtype=dtype)
    shift = xp.asarray((mean / std).reshape(1, -1, 1, 1), dtype=dtype)
    return x.astype(dtype) * scale - shift                            # (B, C, H, W)


def _float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"dtype must be a float type such as 'float32', got {dtype!r}")
    return dt


def random_shift(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Shift each image of uint8 (B, C, H, W) by its own (dy, dx) in [-s, s]^2, zero-filled.

    Pad by s; every H x W crop of the padded image is a view (sliding windows), and one indexed
    copy takes each image's own crop (no loop over images)."""
    B, C, H, W = x.shape
    s = int(max_shift)
    if s <= 0:
        return x
    pad = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)))                 # (B, C, H+2s, W+2s)
    crops = np.lib.stride_tricks.sliding_window_view(pad, (H, W), axis=(2, 3))
    #       (B, C, 2s+1, 2s+1, H, W): crops[b, c, i, j] = the image shifted by (s - i, s - j)
    off = rng.integers(0, 2 * s + 1, size=(2, B))                     # crop corner, (2, B)
    return crops[np.arange(B), :, off[0], off[1]]                     # (B, C, H, W)


class BatchIterator:
    """Seeded mini-batches (x float (B, C, H, W) normalized, y int64 (B,)) on the backend.

    The order of epoch e depends only on (seed, e), and the shifts of batch i only on
    (seed, e, i), so a resumed run sees the same batches: set_epoch(e), then batches(start=i).
    Images are uint8 (N, H, W) or (N, C, H, W) on the host; only a batch is moved."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int,
                 shuffle: bool = True, seed: int = 0, epoch: int = 0, drop_last: bool = False,
                 augment: bool = False, max_shift: int = 2, dtype="float32",
                 mean=MNIST_MEAN, std=MNIST_STD, xp=None):
        images, labels = backend.to_numpy(images), backend.to_numpy(labels)
        if images.ndim not in (3, 4) or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"need images (N, H, W) or (N, C, H, W) and labels (N,), got "
                             f"{images.shape} and {labels.shape}; pass matching arrays")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(images) == 0 or (drop_last and len(images) < batch_size):
            raise ValueError(f"{len(images)} samples give no batch of {batch_size}"
                             f"{' with drop_last' if drop_last else ''}; lower batch_size "
                             f"or set drop_last=False")
        self.images = images if images.ndim == 4 else images[:, None]   # (N, C, H, W) view
        self.labels = labels
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.epoch, self.drop_last = int(epoch), drop_last
        self.augment, self.max_shift = augment, int(max_shift)
        self.dtype, self.mean, self.std, self.xp = _float_dtype(dtype), mean, std, xp

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration uses."""
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Sample indices (N,) of an epoch: a permutation seeded by (seed, epoch)."""
        e = self.epoch if epoch is None else int(epoch)
        n = len(self.labels)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng((self.seed, e, 0)).permutation(n)

    def batches(self, start: int = 0) -> Iterator[tuple]:
        """The batches of the current epoch from batch index `start` on."""
        order = self.order()
        for i in range(start, len(self)):
            yield self.make_batch(order[i * self.batch_size:(i + 1) * self.batch_size], i)

    def __iter__(self) -> Iterator[tuple]:
        return self.batches(0)

    def make_batch(self, idx: np.ndarray, i: int = 0) -> tuple:
        """Gather, maybe shift (on the host, uint8), move, then normalize on the backend."""
        x = self.images[idx]                                             # (B, C, H, W) uint8
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, 1, i))
            x = random_shift(x, self.max_shift, rng)                     # (B, C, H, W)
        xp = backend.xp() if self.xp is None else self.xp
        xb = normalize(xp.asarray(x), self.dtype, self.mean, self.std, xp)  # (B, C, H, W)
        yb = xp.asarray(self.labels[idx].astype(np.int64))              # (B,)
        return xb, yb


def iterate_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                    shuffle: bool = True, seed: int = 0, epoch: int = 0,
                    drop_last: bool = False, augment: bool = False, dtype="float32",
                    xp=None, **kwargs) -> BatchIterator:
    """The batches of one epoch (a BatchIterator: iterable, with len() = number of batches)."""
    return BatchIterator(images, labels, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                         drop_last=drop_last, augment=augment, dtype=dtype, xp=xp, **kwargs)
