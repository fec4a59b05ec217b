"""A checkpoint's preprocessing (config.Preprocessing) applied to image files, as transformers'
image processors (PIL backend) and timm's eval transform do it:

    resize   'square': to resize_size x resize_size; 'shortest': the shorter side to
             resize_size, the longer to int(resize_size * long / short) (aspect ratio kept);
             with PIL's filter `resample` on the uint8 image
    crop     the center image_size x image_size: top = (h - S) // 2, left = (w - S) // 2
    scale    x = (pixel / 255 - mean) / std per channel (data/batches.normalize)

A Preprocessing without resize_size (minivit's own checkpoints) takes images at image_size (or
resizes them straight to it with `resize=True`, bilinear). Needs Pillow for the resize
(pip install -e .[images]).
"""
from __future__ import annotations

import numpy as np

from ..config import Preprocessing
from ..data.imagefolder import convert_channels, read_image
from ..errors import MissingExtra, UserError

__all__ = ["prepare_image", "prepare_images", "resize_shape"]


def resize_shape(h: int, w: int, pre: Preprocessing) -> tuple[int, int]:
    """(height, width) after the resize step."""
    s = pre.resize_size
    if pre.resize_mode == "square":
        return s, s
    if w <= h:
        return int(s * h / w), s
    return s, int(s * w / h)


def _pil_filter(name: str):
    try:
        from PIL import Image
    except ImportError as e:
        raise MissingExtra("resizing images needs Pillow: pip install -e .[images]") from e
    return Image, {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                   "bicubic": Image.BICUBIC}[name]


def prepare_image(img: np.ndarray, pre: Preprocessing, channels: int) -> np.ndarray:
    """uint8 (c, h, w) -> uint8 (channels, S, S): channels converted, resized and center-cropped
    as pre says."""
    img = convert_channels(img, channels) if img.shape[0] != channels else img
    if pre.resize_size is not None:
        h, w = resize_shape(img.shape[1], img.shape[2], pre)
        if (h, w) != img.shape[1:]:
            Image, flt = _pil_filter(pre.resample)
            planes = img.transpose(1, 2, 0)                                # (H, W, C)
            pil = Image.fromarray(planes[..., 0] if channels == 1 else planes)
            out = np.asarray(pil.resize((w, h), resample=flt))            # (h, w[, C])
            img = (out[None] if out.ndim == 2 else out.transpose(2, 0, 1)).copy()
    S = pre.image_size
    if pre.center_crop and S is not None:
        h, w = img.shape[1:]
        if h < S or w < S:
            raise UserError(f"an image of {h}x{w} after resizing is smaller than the "
                            f"{S}x{S} center crop; resize_size must be at least image_size")
        top, left = (h - S) // 2, (w - S) // 2
        img = img[:, top:top + S, left:left + S]
    return np.ascontiguousarray(img)                                      # (C, S, S)


def prepare_images(paths: list, pre: Preprocessing, channels: int) -> np.ndarray:
    """uint8 (M, C, S, S) of image files (PNG/JPEG with Pillow, or .npy) prepared by pre; an
    error naming the file when one does not come out at the model's size."""
    out = []
    for path in paths:
        img = prepare_image(read_image(path), pre, channels)
        S = pre.image_size
        if S is not None and img.shape[1:] != (S, S):
            raise UserError(f"{path} is {img.shape[1]}x{img.shape[2]} after the checkpoint's "
                            f"preprocessing, but the model takes {S}x{S} images")
        out.append(img)
    return np.stack(out)                                                   # (M, C, S, S)
