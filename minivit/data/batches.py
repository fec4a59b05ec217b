"""Batches for training and evaluation: normalization, augmentation, a seeded batch iterator,
and Dataset, the uint8 train/test arrays a data source (mnist.py, imagefolder.py) returns.

Images stay uint8 on the host. BatchIterator gathers one batch at a time, optionally shifts
it by up to +-2 pixels, moves it to the backend as uint8 and normalizes it there. There are no
dataset defaults here: the mean and std come from the dataset's Preprocessing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .. import backend
from ..config import Preprocessing


@dataclass
class Dataset:
    """uint8 images (M, H, W) or (M, C, H, W) with integer labels, and their Preprocessing
    (normalization, size, channels, class names)."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    preprocessing: Preprocessing


def normalize(x, dtype="float32", mean=0.0, std=1.0, xp=None):
    """(x / 255 - mean) / std as float (B, C, H, W) from uint8 (B, H, W) or (B, C, H, W).

    mean and std are scalars or one value per channel: a dataset's Preprocessing holds them
    (the defaults only scale to [0, 1]). x stays on its own backend."""
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
    """Seeded mini-batches (x float (B, C, H, W) normalized with mean and std, a dataset's
    Preprocessing; y int64 (B,)) on the backend.

    The order of epoch e depends only on (seed, e), and the shifts of batch i only on
    (seed, e, i), so a resumed run sees the same batches: set_epoch(e), then batches(start=i).
    Images are uint8 (N, H, W) or (N, C, H, W) on the host; only a batch is moved."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int,
                 shuffle: bool = True, seed: int = 0, epoch: int = 0, drop_last: bool = False,
                 augment: bool = False, max_shift: int = 2, dtype="float32",
                 mean=0.0, std=1.0, xp=None, shard: tuple = (0, 1)):
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
        rank, size = shard
        if not (isinstance(size, int) and size >= 1 and 0 <= rank < size):
            raise ValueError(f"shard must be (rank, size) with 0 <= rank < size, got {shard}")
        if batch_size % size:
            raise ValueError(f"batch_size={batch_size} is not divisible by the {size} processes; "
                             f"choose a batch size that is a multiple of {size}")
        if size > 1 and not drop_last:
            raise ValueError("batches split over processes need drop_last=True (a short last "
                             "batch could not be split evenly)")
        self.shard = (int(rank), int(size))
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
        """Gather, maybe shift (on the host, uint8), move, then normalize on the backend.
        With shard=(rank, size), the shifts are drawn for the whole batch and this process keeps
        its equal slice of rows: the same pixels as one process would see."""
        x = self.images[idx]                                             # (B, C, H, W) uint8
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, 1, i))
            x = random_shift(x, self.max_shift, rng)                     # (B, C, H, W)
        rank, size = self.shard
        if size > 1:
            b = len(idx) // size
            x, idx = x[rank * b:(rank + 1) * b], idx[rank * b:(rank + 1) * b]  # (B/size, C, H, W)
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
