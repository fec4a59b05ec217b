"""Image folders: one sub-folder per class, read into a Dataset of uint8 images.

    root/cat/0001.png  root/cat/0002.npy  root/dog/a.jpg ...      split by test_fraction
    root/train/cat/... root/test/cat/...                          or a given split

Class names are the sorted sub-folder names (label i = class_names[i]); hidden files and
folders are ignored. Files:

    .png .jpg .jpeg  read with Pillow (`pip install -e .[images]`); grayscale modes (1, L, LA,
                     I, F) give 1 channel, the rest are converted to RGB (alpha dropped); a
                     palette image whose colours are all gray gives 1 channel.
    .npy             uint8 (H, W), (H, W, C) or (C, H, W) with C = 1 or 3: a 3-D array is
                     channels-last when its last axis is 1 or 3, else channels-first. Other
                     integer dtypes must hold 0..255; float arrays must hold values in [0, 1]
                     (scaled by 255 and rounded). Read without unpickling, its header
                     checked before anything is allocated (files.read_npy).

Resizing to image_size x image_size is bilinear: Pillow's (antialiased when shrinking) for
PNG/JPEG, a separable NumPy resample (pixel centres aligned, no antialiasing) for .npy.
Channels: 1 when every image is grayscale, else 3 (gray images are repeated); channels=1
turns RGB into luma L = 0.299 R + 0.587 G + 0.114 B (ITU-R 601-2, as Pillow's 'L').
mean and std are per channel, of pixel / 255, over the training split only.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Optional

import numpy as np

from ..config import Preprocessing
from ..files import MAX_DEFLATE_RATIO, FileFormatError, check_file, read_npy
from ..resample import interp_matrix
from .batches import Dataset

__all__ = ["ImageFolderError", "load_image_folder", "load_images", "read_image", "convert_channels",
           "resize_image", "list_classes", "channel_stats", "EXTENSIONS"]

PIL_EXTENSIONS = (".png", ".jpg", ".jpeg")
EXTENSIONS = (".npy",) + PIL_EXTENSIONS
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
LUMA = np.array([0.299, 0.587, 0.114])          # ITU-R 601-2, the weights of Pillow's 'L'


class ImageFolderError(FileFormatError):
    """An image folder or image file that cannot be used; the message names it and the fix.
    ImageFolderError.NotFound (also a FileNotFoundError) for a missing image file."""


NPY_FIX = "re-save it with np.save or remove it"


# ---- one image ----------------------------------------------------------------------------------
def read_image(path, image_size: Optional[int] = None) -> np.ndarray:
    """One image file -> uint8 (C, H, W), C = 1 or 3 as stored; resized to image_size x
    image_size (bilinear) when given. Raises ImageFolderError naming the file."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise ImageFolderError(f"{path}: unsupported file type {ext or '(no extension)'!r}; use "
                               f"one of {', '.join(EXTENSIONS)}")
    check_file(path, ImageFolderError, "an image", "re-export it or remove it")
    if ext == ".npy":
        img = _read_npy(path)                                         # (C, H, W)
        if image_size is not None and img.shape[1:] != (image_size, image_size):
            img = resize_image(img, image_size)
        return img
    return _read_pil(path, image_size)


def _read_npy(path: str) -> np.ndarray:
    """A .npy image (see the module docstring for the accepted layouts) -> uint8 (C, H, W)."""
    arr = read_npy(path, ImageFolderError, "a .npy image", NPY_FIX)
    if arr.dtype.kind not in "uif":
        raise ImageFolderError(f"{path}: a .npy image must hold integers or floats, got "
                               f"{arr.dtype}; save uint8 0..255")
    if arr.ndim == 2:
        arr = arr[None]                                               # (1, H, W)
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3):
        arr = np.moveaxis(arr, -1, 0)                                 # (C, H, W)
    elif not (arr.ndim == 3 and arr.shape[0] in (1, 3)):
        raise ImageFolderError(f"{path}: array of shape {arr.shape} is not an image (H, W), "
                               f"(H, W, C) or (C, H, W) with C = 1 or 3; drop an alpha channel "
                               f"with arr[..., :3] or squeeze extra axes")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ImageFolderError(f"{path}: empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageFolderError(f"{path}: float .npy image holds NaN or inf; fix the data "
                                   f"or remove the file")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ImageFolderError(f"{path}: float .npy images must hold values in [0, 1], got "
                                   f"{arr.min():.4g}..{arr.max():.4g}; divide 0..255 data by "
                                   f"255, or save it as uint8")
        return np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    if arr.min() < 0 or arr.max() > 255:
        raise ImageFolderError(f"{path}: integer .npy images must hold 0..255, got "
                               f"{arr.min()}..{arr.max()}; rescale to 0..255 and save as uint8")
    return arr.astype(np.uint8)


def _pil():
    """PIL.Image, or None when Pillow is not installed."""
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def _read_pil(path: str, image_size: Optional[int]) -> np.ndarray:
    """A PNG/JPEG through Pillow -> uint8 (C, H, W), C = 1 (gray modes) or 3."""
    Image = _pil()
    if Image is None:
        raise ImageFolderError(f"{path}: reading PNG/JPEG images needs Pillow, which is not "
                               f"installed; run `pip install -e .[images]` (or pip install "
                               f"pillow), or convert the images to .npy")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below
            im = Image.open(path)                     # reads the header only
        with im:
            _check_pixels(path, im.size, Image.MAX_IMAGE_PIXELS)
            if im.format == "PNG":
                _check_png_size(path, im.size)
            im.load()
            palette = im.mode in ("P", "PA")
            im = im.convert("L" if im.mode in GRAY_MODES else "RGB")
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)                      # (H, W) or (H, W, 3)
    except ImageFolderError:
        raise
    except Exception as e:                         # UnidentifiedImageError, OSError, ...
        raise ImageFolderError(f"cannot read image {path} ({type(e).__name__}: {e}); the file "
                               f"is damaged or not a PNG/JPEG: re-export it or remove it") from e
    if arr.ndim == 2:
        return arr[None].copy()                                       # (1, H, W)
    arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0))               # (3, H, W)
    if palette and (arr[0] == arr[1]).all() and (arr[0] == arr[2]).all():
        return arr[:1].copy()                                         # a gray palette: (1, H, W)
    return arr


def _check_pixels(path: str, size: tuple, limit) -> None:
    """Refuse, before decoding, an image whose header declares more pixels than Pillow's
    decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS; None turns the check off)."""
    w, h = size
    if limit and w * h > limit:
        raise ImageFolderError(f"{path} declares {w}x{h} pixels, more than the {limit} that are "
                               f"read safely (a damaged or hostile file?); shrink the image, or "
                               f"raise PIL.Image.MAX_IMAGE_PIXELS if you trust it")


def _check_png_size(path: str, size: tuple) -> None:
    """Refuse, before decoding, a PNG that declares more pixels than its bytes can hold: its
    rows (at least one bit a pixel) are deflated, which shrinks data at most MAX_DEFLATE_RATIO
    times, so Pillow never reserves an image the file cannot fill."""
    w, h = size
    n = os.path.getsize(path)
    if w * h > 8 * MAX_DEFLATE_RATIO * n:
        raise ImageFolderError(f"{path} declares {w}x{h} pixels, more than its {n} bytes can hold "
                               f"(compressed PNG rows inflate at most {MAX_DEFLATE_RATIO} times): "
                               f"the file is damaged; re-export it or remove it")


def resize_image(img: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (C, H, W) -> (C, S, S), bilinear with pixel centres aligned (no antialiasing):
    y = Wh @ x @ Ww^T with resample.interp_matrix(align_corners=False)."""
    C, H, W = img.shape
    Wh = interp_matrix(H, image_size, "bilinear", align_corners=False)   # (S, H)
    Ww = interp_matrix(W, image_size, "bilinear", align_corners=False)   # (S, W)
    out = np.einsum("ah,chw,bw->cab", Wh, img.astype(np.float64), Ww)    # (C, S, S)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def convert_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (C, H, W) -> (channels, H, W): gray is repeated to RGB; RGB -> luma (ITU-R 601-2)."""
    C = img.shape[0]
    if C == channels:
        return img
    if C == 1 and channels == 3:
        return np.repeat(img, 3, axis=0)                              # (3, H, W)
    if C == 3 and channels == 1:
        luma = np.einsum("c,chw->hw", LUMA, img.astype(np.float64))   # (H, W)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[None]  # (1, H, W)
    raise ImageFolderError(f"cannot convert a {C}-channel image to {channels} channels; "
                           f"only 1 (gray) and 3 (RGB) are supported")


# ---- a folder -----------------------------------------------------------------------------------
def list_classes(folder: str, min_classes: int = 2) -> tuple[list, list]:
    """(sorted class names, [(file path, label)]) of a folder with one sub-folder per class."""
    if not os.path.isdir(folder):
        raise ImageFolderError(f"{folder} is not a folder; pass a folder holding one sub-folder "
                               f"of images per class")
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    names = [e for e in entries if os.path.isdir(os.path.join(folder, e))]
    if not entries:
        raise ImageFolderError(f"{folder} is empty; put one sub-folder of images per class in "
                               f"it ({folder}/<class>/<image>.png)")
    if len(names) < min_classes:
        loose = [e for e in entries if e not in names]
        raise ImageFolderError(
            f"{folder} has {len(names)} class sub-folder(s) {names}, need at least {min_classes} "
            f"(one sub-folder of images per class, e.g. {folder}/cat/1.png, {folder}/dog/2.png)"
            + (f"; it also holds {len(loose)} loose file(s) such as {loose[0]!r}, which are not "
               f"used" if loose else ""))
    files = []
    for label, name in enumerate(names):
        sub = os.path.join(folder, name)
        found = sorted(f for f in os.listdir(sub) if not f.startswith(".")
                       and os.path.isfile(os.path.join(sub, f)))
        imgs = [f for f in found if os.path.splitext(f)[1].lower() in EXTENSIONS]
        if not imgs:
            other = f" (it holds {len(found)} other file(s), e.g. {found[0]!r})" if found else ""
            raise ImageFolderError(f"class folder {sub} has no images ({', '.join(EXTENSIONS)})"
                                   f"{other}; add images or remove the folder")
        files += [(os.path.join(sub, f), label) for f in imgs]
    return names, files


def _split(files: list, test_fraction: float, seed: int) -> tuple[list, list]:
    """Per class, a seeded round(n * test_fraction) of the files (at least 1 and at most n - 1
    when n >= 2; none when n == 1) go to the test split."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in sorted({lab for _, lab in files}):
        mine = [f for f in files if f[1] == label]
        n = len(mine)
        k = min(max(int(round(n * test_fraction)), 1), n - 1) if n >= 2 else 0
        pick = set(rng.permutation(n)[:k].tolist())
        test += [f for i, f in enumerate(mine) if i in pick]
        train += [f for i, f in enumerate(mine) if i not in pick]
    return train, test


def split_classes(root: str, train_dir: Optional[str], test_dir: Optional[str], listing,
                  test_fraction: float, seed: int) -> tuple[list, list, list]:
    """(class names, train [(path, label)], test [(path, label)]) of an image folder: its
    train_dir and test_dir when given (each test class must be a training class; labels are
    the training classes'), else root's classes split per class, seeded (_split).
    listing(folder, test=False) -> (names, [(path, label)]) lists one folder of classes."""
    if train_dir is not None:
        names, train = listing(train_dir)
        test_names, test = listing(test_dir, test=True)
        unknown = [n for n in test_names if n not in names]
        if unknown:
            raise ImageFolderError(f"{test_dir} has classes {unknown} that {train_dir} lacks; "
                                   f"every test class needs training images: add them to "
                                   f"{train_dir} or remove them from {test_dir}")
        return names, train, [(p, names.index(test_names[lab])) for p, lab in test]
    names, files = listing(root)
    train, test = _split(files, test_fraction, seed)
    if not test:
        raise ImageFolderError(f"{root}: no class has 2 images, so no test split can be held "
                               f"out; add images or give {os.path.join(root, 'train')} and "
                               f"{os.path.join(root, 'test')}")
    return names, train, test


def _read_all(files: list, image_size: Optional[int]) -> list:
    return [read_image(path, image_size) for path, _ in files]


def _stack(images: list, channels: int) -> np.ndarray:
    """Same-size uint8 (C, H, W) images -> (M, channels, H, W)."""
    out = [convert_channels(img, channels) for img in images]
    return np.stack(out) if out else np.zeros((0, channels, 1, 1), np.uint8)


def _check_sizes(images: list, files: list, root: str) -> int:
    """The common square size S of all images, or an error naming two files that differ."""
    sizes = {}
    for img, (path, _) in zip(images, files):
        sizes.setdefault(img.shape[1:], path)
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w} ({p})" for (h, w), p in list(sizes.items())[:3])
        raise ImageFolderError(f"images in {root} have {len(sizes)} different sizes: {shown}; "
                               f"pass image_size (--image-size S) to resize them all to S x S")
    (H, W), path = next(iter(sizes.items()))
    if H != W:
        raise ImageFolderError(f"images in {root} are {H}x{W} (e.g. {path}), not square; pass "
                               f"image_size (--image-size S) to resize them to S x S")
    return H


def channel_stats(x: np.ndarray) -> tuple[list, list]:
    """Per-channel mean and std of pixel / 255 over uint8 images (M, C, H, W), exact, from
    256-bin histograms (no float copy of the data); a constant channel gets std 1."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[1]):
        h = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)   # (256,)
        m = float((h * levels).sum() / h.sum())
        s = float(np.sqrt((h * (levels - m) ** 2).sum() / h.sum()))
        mean.append(m)
        std.append(s if s > 0 else 1.0)
    return mean, std


def load_image_folder(root, image_size: Optional[int] = None, channels: Optional[int] = None,
                      test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A Dataset of uint8 images (M, C, S, S) and int64 labels from an image folder, with its
    Preprocessing (mean and std of the training split, size, channels, class names).

    root/train/<class>/ and root/test/<class>/ give the split when both exist (the test classes
    must be among the training classes); otherwise root/<class>/ is split per class, seeded,
    with test_fraction of the images held out. channels: 1, 3, or None (1 if all images are
    gray, else 3). mean/std: per channel, of pixel / 255, over the training split."""
    root = os.fspath(root)
    if image_size is not None and (not isinstance(image_size, (int, np.integer))
                                   or isinstance(image_size, bool) or image_size < 1):
        raise ImageFolderError(f"image_size must be a positive integer, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ImageFolderError(f"channels must be 1, 3 or None (from the images), got "
                               f"{channels!r}")
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if not (os.path.isdir(train_dir) and os.path.isdir(test_dir)):
        train_dir = test_dir = None                       # root/<class>/, split here
        if not 0.0 < test_fraction < 1.0:
            raise ImageFolderError(f"test_fraction must be in (0, 1), got {test_fraction}; or "
                                   f"give the split as {root}/train/<class> and "
                                   f"{root}/test/<class>")
    class_names, train_files, test_files = split_classes(
        root, train_dir, test_dir,
        lambda folder, test=False: list_classes(folder, min_classes=1 if test else 2),
        test_fraction, seed)
    images = _read_all(train_files + test_files, image_size)
    _check_sizes(images, train_files + test_files, root)
    if channels is None:
        channels = 1 if all(img.shape[0] == 1 for img in images) else 3
    n = len(train_files)
    x_train = _stack(images[:n], channels)               # (M, C, S, S)
    x_test = _stack(images[n:], channels)                 # (M', C, S, S)
    y_train = np.array([lab for _, lab in train_files], dtype=np.int64)
    y_test = np.array([lab for _, lab in test_files], dtype=np.int64)
    mean, std = channel_stats(x_train)
    pre = Preprocessing(mean=mean, std=std, image_size=x_train.shape[-1], channels=channels,
                        class_names=list(class_names))
    return Dataset(x_train, y_train, x_test, y_test, pre)


def load_images(paths: list, image_size: int, channels: int, resize: bool) -> np.ndarray:
    """uint8 (M, C, S, S) at a model's size S and channels C; notes channel conversions on
    stderr; a clear error for an unreadable file or a wrong size (suggesting --resize)."""
    S, C = image_size, channels
    out = []
    for path in paths:
        img = read_image(path, S if resize else None)                 # (c, h, w)
        if img.shape[1:] != (S, S):
            raise ImageFolderError(f"{path} is {img.shape[1]}x{img.shape[2]} but the model takes "
                                   f"{S}x{S} images; pass --resize to resize it (bilinear)")
        if img.shape[0] != C:
            kind = {1: "grayscale", 3: "RGB"}
            print(f"note: {path} is {kind[img.shape[0]]}; converted to {kind[C]} for the "
                  f"{C}-channel model", file=sys.stderr)
            img = convert_channels(img, C)
        out.append(img)
    return np.stack(out)                                              # (M, C, S, S)
