"""Photos for predict and embed: find the image files among paths and folders, read each one
the way an image viewer shows it, and fit it to a model's input.

    find_images(["cat.jpg", "album/"])   files as given; folders walked recursively, sorted,
                                         hidden files and folders (".name") left out, only
                                         files with an image extension (IMAGE_EXTENSIONS, .npy)
    read_photo(path)                     uint8 (C, H, W), C = 1 (gray) or 3 (RGB)
    fit_image(img, ...)                  uint8 (channels, S, S): the model's preprocessing
    read_batches(paths, prepare, n)      batches of prepared images; a file that cannot be read
                                         or prepared is reported with its reason and left out
    class_folder(root)                   (class names, [(path, label)]) of root/<class>/...
    folder_splits(root)                  (root/train, root/test): which split folders it has
    split_by_class(files, f, seed)       a seeded per-class train/test split

A file named on the command line is tried whatever its extension; inside a folder only the
image extensions count, so that a README or a .csv beside the photos is not reported as a
broken image.

Reading (Pillow, `pip install -e .[images]`), for every format Pillow opens (PNG, JPEG, WebP,
BMP, GIF, TIFF, ...):

    frames       the first frame of an animation (GIF, APNG, WebP) or of a multi-page TIFF
    orientation  the EXIF orientation tag is applied (a phone photo comes out upright, as a
                 viewer and transformers' load_image show it)
    transparency composited onto white (RGBA, LA, a palette with a transparent colour), as
                 transformers' image processors do; not dropped, which would show whatever
                 colour the transparent pixels happen to hold
    gray         modes 1, L, LA, I, F give 1 channel; 16-bit gray (I;16) is scaled to 0..255;
                 a palette image whose colours are all gray gives 1 channel
    the rest     converted to RGB (CMYK, YCbCr, palette, ...)

.npy arrays are read by imagefolder.read_image (no unpickling, the header checked first). An
image whose header declares more pixels than PIL.Image.MAX_IMAGE_PIXELS is refused before it is
decoded. Every error is an ImageFolderError naming the file, the problem and the fix.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np

from ..config import Preprocessing
from ..errors import UserError
from ..files import check_file
from .imagefolder import (ImageFolderError, _check_pixels, _check_png_size, _pil, _split,
                          convert_channels, read_image, resize_image)

__all__ = ["IMAGE_EXTENSIONS", "find_images", "read_photo", "fit_image", "read_batches",
           "Batch", "needs_pillow", "pillow", "class_folder", "folder_splits", "split_by_class"]

# The raster formats a folder walk picks up (with Pillow; .npy without it). A file named on the
# command line is tried whatever its extension.
IMAGE_EXTENSIONS = (".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".dib",
                    ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
                    ".qoi", ".jp2", ".j2k", ".jpx", ".avif", ".heic", ".heif", ".psd", ".sgi",
                    ".pcx", ".dds", ".icns")
GRAY_MODES = ("1", "L", "I", "F")                   # 1 channel (LA: gray + alpha, below)
WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N")      # 16-bit gray, scaled to 0..255
WHITE = 255


def pillow():
    """PIL.Image, or None when Pillow is not installed (imagefolder's lookup)."""
    return _pil()


def _hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(inputs) -> tuple[list, list]:
    """(image paths, [(path, reason)] of inputs that do not exist) from files and folders.

    Files are kept as given (any extension: Pillow identifies the format from the contents);
    a folder contributes the image files under it (IMAGE_EXTENSIONS and .npy, any letter case),
    recursively, in sorted order of their path below the folder, leaving out hidden files and
    folders. Order: the inputs' order, each folder's files in place of the folder."""
    found, missing = [], []
    for raw in inputs:
        path = os.fspath(raw)
        if os.path.isdir(path):
            found += _walk(path)
        elif os.path.exists(path):
            found.append(path)
        else:
            missing.append((path, "no such file or folder"))
    return found, missing


def _walk(folder: str) -> list:
    """The image files under folder, sorted by their path parts (a folder's files in name
    order, each sub-folder's files after its name), hidden entries left out; symbolic links to
    folders are not followed (no cycles)."""
    exts = set(IMAGE_EXTENSIONS) | {".npy"}
    rel = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        base = os.path.relpath(here, folder)
        parts = () if base == os.curdir else tuple(base.split(os.sep))
        rel += [parts + (f,) for f in files
                if not _hidden(f) and os.path.splitext(f)[1].lower() in exts]
    return [os.path.join(folder, *p) for p in sorted(rel)]


def needs_pillow(paths: list) -> list:
    """The paths that need Pillow (every one but .npy) when Pillow is not installed, else []."""
    if pillow() is not None:
        return []
    return [p for p in paths if os.path.splitext(p)[1].lower() != ".npy"]


# ---- one image ----------------------------------------------------------------------------------
def read_photo(path) -> np.ndarray:
    """One image file -> uint8 (C, H, W), C = 1 or 3, as the module docstring describes; an
    ImageFolderError naming the file and the reason when it cannot be read."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() == ".npy":
        return read_image(path)
    check_file(path, ImageFolderError, "an image", "re-export it or remove it")
    Image = pillow()
    if Image is None:
        raise ImageFolderError(f"{path}: reading image files needs Pillow, which is not "
                               f"installed; run `pip install -e .[images]` (or pip install "
                               f"pillow), or convert the images to .npy")
    from PIL import ImageOps
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # checked below
            im = Image.open(path)                                   # the header only
        with im:
            _check_pixels(path, im.size, Image.MAX_IMAGE_PIXELS)
            if im.format == "PNG":
                _check_png_size(path, im.size)                      # before decoding, as there
            im.seek(0)                                              # the first frame
            im.load()
            arr = _to_array(_upright(im, ImageOps), Image)
    except ImageFolderError:
        raise
    except Exception as e:                        # UnidentifiedImageError, OSError, SyntaxError
        kind = "not an image Pillow can read" if type(e).__name__ == "UnidentifiedImageError" \
            else "damaged or truncated"
        raise ImageFolderError(f"cannot read image {path} ({type(e).__name__}: {e}); the file "
                               f"is {kind}: re-export it or remove it") from e
    if arr.ndim == 2:
        return arr[None].copy()                                     # (1, H, W)
    arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0))             # (3, H, W)
    return arr


def _upright(im, ImageOps):
    """The image turned as its EXIF orientation tag says; as it is when the tag is missing or
    cannot be parsed (a damaged EXIF block does not make the pixels unreadable)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:                              # noqa: BLE001 (Pillow's EXIF parsing errors)
        return im


def _to_array(im, Image) -> np.ndarray:
    """A loaded PIL image -> uint8 (H, W) (gray) or (H, W, 3), transparency on white."""
    palette = im.mode in ("P", "PA")
    if im.mode in WIDE_GRAY:
        wide = np.asarray(im, dtype=np.float64)                     # 0..65535
        return np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    transparent = "A" in im.getbands() or "transparency" in im.info
    gray_source = im.mode in GRAY_MODES or im.mode in ("LA", "La")
    if transparent:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (WHITE, WHITE, WHITE, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    if gray_source:
        return np.asarray(im.convert("L"), dtype=np.uint8)          # (H, W)
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)             # (H, W, 3)
    if palette and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
        return arr[..., 0].copy()                                   # a gray palette
    return arr


def fit_image(img: np.ndarray, path: str, image_size: int, channels: int,
              pre: Optional[Preprocessing], resize: bool) -> np.ndarray:
    """uint8 (c, h, w) -> (channels, S, S) for a model taking S x S images with `channels`
    channels: gray repeated to RGB or RGB to luma; then the preprocessing's own resize and
    center crop when it has one (io/preprocess.py, as transformers and timm do), else the image
    as it is when it is S x S, resized straight to S x S (bilinear) with resize=True, or an
    ImageFolderError that suggests --resize."""
    from ..io.preprocess import prepare_image
    S = image_size
    img = convert_channels(img, channels)
    if pre is not None and pre.resize_size is not None:
        img = prepare_image(img, pre, channels)
        if img.shape[1:] != (S, S):
            raise ImageFolderError(f"{path} is {img.shape[1]}x{img.shape[2]} after the model's "
                                   f"preprocessing, but the model takes {S}x{S} images")
        return img
    if img.shape[1:] == (S, S):
        return img
    if not resize:
        raise ImageFolderError(f"{path} is {img.shape[1]}x{img.shape[2]} but the model takes "
                               f"{S}x{S} images; pass --resize to resize it (bilinear)")
    if os.path.splitext(path)[1].lower() == ".npy":
        return resize_image(img, S)                    # NumPy bilinear, as imagefolder reads
    Image = pillow()                                   # Pillow's bilinear (antialiased)
    planes = img.transpose(1, 2, 0)                    # (H, W, C)
    pil = Image.fromarray(planes[..., 0] if channels == 1 else np.ascontiguousarray(planes))
    out = np.asarray(pil.resize((S, S), Image.BILINEAR))
    return np.ascontiguousarray(out[None] if out.ndim == 2 else out.transpose(2, 0, 1))


# ---- many -----------------------------------------------------------------------------------
class Batch(NamedTuple):
    """One batch of read_batches: the paths read, their images (b, C, S, S) uint8 (None when
    every file of the batch was skipped), the [(path, reason)] skipped, the source channel
    count of each image read (1 or 3), and how many paths were looked at."""
    paths: list
    images: Optional[np.ndarray]
    skipped: list
    channels: list
    done: int


def read_batches(paths: list, prepare: Callable, batch_size: int,
                 threads: int = 4) -> Iterator[Batch]:
    """Read and prepare the images in order, batch_size paths at a time (decoding on a few
    threads: Pillow releases the GIL). prepare(img (c, h, w), path) -> (C, S, S). A file that
    raises an ImageFolderError (unreadable, wrong size, ...) or another FileFormatError/OSError
    is reported in Batch.skipped with its message; a programming error propagates."""
    from ..files import FileFormatError

    def one(path):
        try:
            img = read_photo(path)
            return path, prepare(img, path), img.shape[0], None
        except (FileFormatError, OSError) as e:
            return path, None, None, str(e)

    workers = max(1, min(threads, batch_size, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for i in range(0, len(paths), batch_size):
            chunk = paths[i:i + batch_size]
            got = list(pool.map(one, chunk))
            ok = [g for g in got if g[3] is None]
            images = np.stack([g[1] for g in ok]) if ok else None
            yield Batch([g[0] for g in ok], images, [(g[0], g[3]) for g in got if g[3]],
                        [g[2] for g in ok], len(chunk))


# ---- folders of classes (evaluate) --------------------------------------------------------------
def _subfolders(folder: str) -> list:
    """The sorted non-hidden sub-folders of folder."""
    return sorted(e for e in os.listdir(folder)
                  if not _hidden(e) and os.path.isdir(os.path.join(folder, e)))


def folder_splits(root: str) -> tuple[Optional[str], Optional[str]]:
    """(root/train, root/test), each None when root has no such split folder: a sub-folder
    named train or test that holds class sub-folders itself (a class folder of images that
    happens to be called 'test' is a class). (None, None): root is itself a folder of classes."""
    out = []
    for split in ("train", "test"):
        path = os.path.join(root, split)
        out.append(path if os.path.isdir(path) and _subfolders(path) else None)
    return out[0], out[1]


def class_folder(root: str) -> tuple[list, list]:
    """(class names, [(image path, label)]) of root/<class>/: the class names are the sorted
    sub-folder names (label i = names[i]); each class folder's images are found as
    find_images finds a folder's (recursively, sorted, image extensions only, hidden entries
    left out). An ImageFolderError names the folder and the fix when root is not a folder,
    has no class sub-folders, or a class folder has no images."""
    if not os.path.isdir(root):
        raise ImageFolderError(f"{root} is not a folder; pass a folder holding one sub-folder "
                               f"of images per class ({os.path.join(root, '<class>', '<image>')})")
    names = _subfolders(root)
    if not names:
        loose = [e for e in sorted(os.listdir(root)) if not _hidden(e)]
        found = (f"; it holds {len(loose)} file(s) such as {loose[0]!r}: move each image into "
                 f"the sub-folder of its class" if loose else "; it is empty")
        raise ImageFolderError(f"{root} has no class sub-folders (one per class: "
                               f"{os.path.join(root, 'cat', '1.jpg')}, "
                               f"{os.path.join(root, 'dog', '2.jpg')}){found}")
    files = []
    for label, name in enumerate(names):
        found = _walk(os.path.join(root, name))
        if not found:
            raise ImageFolderError(f"class folder {os.path.join(root, name)} has no images "
                                   f"(.png, .jpg, .webp, ... or .npy); add images or remove "
                                   f"the folder")
        files += [(path, label) for path in found]
    return names, files


def split_by_class(files: list, test_fraction: float, seed: int) -> tuple[list, list]:
    """(train, test) of [(path, label)]: per class, a seeded round(n * test_fraction) of its n
    files (at least 1 and at most n - 1 when n >= 2; none when n == 1) go to the test split,
    the rule image folders are split by for fine-tuning (imagefolder.load_image_folder)."""
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return _split(files, test_fraction, seed)
