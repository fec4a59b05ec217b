"""Batches for training and evaluation: normalization, augmentation, a seeded batch iterator,
and Dataset, the uint8 train/test arrays a data source (mnist.py, imagefolder.py) returns.

Images stay uint8 on the host. BatchIterator gathers one batch at a time, optionally augments
it (AUGMENTATIONS: "shift" moves each image by up to +-2 pixels, for MNIST; "crop-flip" takes a
random resized crop and a random horizontal flip, for photos), moves it to the backend as uint8
and normalizes it there. There are no dataset defaults here: the mean and std come from the
dataset's Preprocessing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .. import backend
from ..config import Preprocessing
from ..errors import UserError


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
        raise UserError(f"images must be (B, H, W) or (B, C, H, W), got shape {x.shape}; "
                        f"move a channels-last axis first with np.moveaxis(x, -1, 1)")
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean.size not in (1, x.shape[1]) or std.size not in (1, x.shape[1]):
        raise UserError(f"mean/std have {mean.size}/{std.size} values for {x.shape[1]} "
                        f"channels; give one value or one per channel")
    scale = xp.asarray((1.0 / (255.0 * std)).reshape(1, -1, 1, 1), dtype=dtype)
    shift = xp.asarray((mean / std).reshape(1, -1, 1, 1), dtype=dtype)
    return x.astype(dtype) * scale - shift                            # (B, C, H, W)



def _float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise UserError(f"dtype must be a float type such as 'float32', got {dtype!r}")
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


def random_resized_crop_flip(x: np.ndarray, rng: np.random.Generator,
                             scale: tuple = (0.08, 1.0), ratio: tuple = (3 / 4, 4 / 3)) -> np.ndarray:
    """Each image of uint8 (B, C, H, W) cropped to a random box and resized back to H x W
    (bilinear), then flipped left-right with probability 1/2: the augmentation the ViT and DeiT
    recipes fine-tune with (torchvision's RandomResizedCrop + RandomHorizontalFlip), applied to
    the stored H x W images.

    The box of image b covers a fraction a_b ~ U(scale) of the area with aspect ratio r_b
    (log-uniform in ratio), clipped to the image: height h = sqrt(a H W / r), width w = sqrt(a H
    W r), corner uniform. Output pixel (i, j) samples the box at y = top + (i + 1/2) h / H - 1/2,
    x = left + (j + 1/2) w / W - 1/2 (x mirrored for a flipped image), bilinearly from its four
    neighbours: one gather per neighbour for the whole batch, no loop over images."""
    B, C, H, W = x.shape
    area = rng.uniform(scale[0], scale[1], B) * H * W                  # (B,)
    r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), B))     # (B,)
    h = np.clip(np.sqrt(area / r), 1.0, H)                             # (B,) box height
    w = np.clip(np.sqrt(area * r), 1.0, W)                             # (B,) box width
    top = rng.uniform(0.0, 1.0, B) * (H - h)                           # (B,)
    left = rng.uniform(0.0, 1.0, B) * (W - w)                          # (B,)
    flip = rng.uniform(0.0, 1.0, B) < 0.5                              # (B,)
    ys = top[:, None] + (np.arange(H) + 0.5) * (h / H)[:, None] - 0.5  # (B, H) sample rows
    xs = left[:, None] + (np.arange(W) + 0.5) * (w / W)[:, None] - 0.5  # (B, W) sample columns
    xs = np.where(flip[:, None], xs[:, ::-1], xs)
    ys, xs = np.clip(ys, 0, H - 1), np.clip(xs, 0, W - 1)
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
    fy, fx = (ys - y0)[:, None, :, None], (xs - x0)[:, None, None, :]  # (B, 1, H, 1), (B, 1, 1, W)
    b, c = np.arange(B)[:, None, None, None], np.arange(C)[None, :, None, None]

    def at(yi, xi):                                                    # (B, C, H, W) float32
        return x[b, c, yi[:, None, :, None], xi[:, None, None, :]].astype(np.float32)
    top_row = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom_row = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    out = top_row * (1 - fy) + bottom_row * fy                         # (B, C, H, W)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


AUGMENTATIONS = ("shift", "crop-flip")


class BatchIterator:
    """Seeded mini-batches (x float (B, C, H, W) normalized with mean and std, a dataset's
    Preprocessing; y int64 (B,)) on the backend.

    The order of epoch e depends only on (seed, e), and the augmentation of batch i only on
    (seed, e, i), so a resumed run sees the same batches: set_epoch(e), then batches(start=i).
    augment: False, "shift" (True: random shifts of up to max_shift pixels) or "crop-flip"
    (random_resized_crop_flip). Images are uint8 (N, H, W) or (N, C, H, W) on the host; only a
    batch is moved."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int,
                 shuffle: bool = True, seed: int = 0, epoch: int = 0, drop_last: bool = False,
                 augment: bool = False, max_shift: int = 2, dtype="float32",
                 mean=0.0, std=1.0, xp=None, shard: tuple = (0, 1)):
        images, labels = backend.to_numpy(images), backend.to_numpy(labels)
        if images.ndim not in (3, 4) or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"need images (N, H, W) or (N, C, H, W) and labels (N,), got "
                            f"{images.shape} and {labels.shape}; pass matching arrays")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(images) == 0 or (drop_last and len(images) < batch_size):
            raise UserError(f"{len(images)} samples give no batch of {batch_size}"
                            f"{' with drop_last' if drop_last else ''}; lower batch_size "
                            f"or set drop_last=False")
        rank, size = shard
        if not (isinstance(size, int) and size >= 1 and 0 <= rank < size):
            raise UserError(f"shard must be (rank, size) with 0 <= rank < size, got {shard}")
        if batch_size % size:
            raise UserError(f"batch_size={batch_size} is not divisible by the {size} processes; "
                            f"choose a batch size that is a multiple of {size}")
        if size > 1 and not drop_last:
            raise UserError("batches split over processes need drop_last=True (a short last "
                            "batch could not be split evenly)")
        augment = "shift" if augment is True else augment
        if augment and augment not in AUGMENTATIONS:
            raise UserError(f"augment must be False, True (shift) or one of {AUGMENTATIONS}, "
                            f"got {augment!r}")
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
        """Gather, maybe augment (on the host, uint8), move, then normalize on the backend.
        With shard=(rank, size), the augmentation is drawn for the whole batch and this process
        keeps its equal slice of rows: the same pixels as one process would see."""
        x = self.images[idx]                                             # (B, C, H, W) uint8
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, 1, i))
            if self.augment == "shift":
                x = random_shift(x, self.max_shift, rng)                 # (B, C, H, W)
            else:
                x = random_resized_crop_flip(x, rng)                     # (B, C, H, W)
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
