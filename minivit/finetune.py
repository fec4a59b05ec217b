"""Fine-tuning helpers: resample the position table to a new resolution, swap in a new
zero-initialized head, and pick which parameters an optimizer should leave frozen.

    model = load_google_npz("ViT-B_16.npz", image_size=384)   # resizes the position table
    replace_head(model, num_classes=10)                       # zero head, as in the paper
    opt = AdamW(..., frozen=frozen_keys(model, head_only=True))
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import backend
from .layers import sincos_2d
from .model import ViT

__all__ = ["interp_matrix", "resize_pos_embed", "set_image_size", "replace_head",
           "trainable_keys", "frozen_keys"]

METHODS = ("bilinear", "bicubic")
CUBIC_A = -0.75     # Keys' cubic convolution parameter used by PyTorch/timm 'bicubic'


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys cubic-convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fractions t (M,).
    w(s) = ((A+2)|s| - (A+3)) s^2 + 1            for |s| <= 1,
    w(s) = ((A|s| - 5A)|s| + 8A)|s| - 4A          for 1 < |s| < 2."""
    A = CUBIC_A
    s = np.stack([1.0 + t, t, 1.0 - t, 2.0 - t], axis=1)             # (M, 4) distances |s|
    near = ((A + 2.0) * s - (A + 3.0)) * s * s + 1.0
    far = ((A * s - 5.0 * A) * s + 8.0 * A) * s - 4.0 * A
    return np.where(s <= 1.0, near, far)                              # (M, 4)


def interp_matrix(n_in: int, n_out: int, method: str = "bilinear",
                  align_corners: bool = True) -> np.ndarray:
    """(n_out, n_in) matrix W with y = W @ x resampling a length-n_in signal to n_out samples.

    Source coordinate of output sample o:
      align_corners=True:  u = o (n_in - 1) / (n_out - 1)  (end samples aligned; what
                           scipy.ndimage.zoom(order=1) does, used by the vit_jax fine-tuning code)
      align_corners=False: u = (o + 1/2) n_in / n_out - 1/2 (pixel areas aligned; PyTorch's default)
    'bilinear' blends the two neighbours of u (u clamped to [0, n_in - 1], as PyTorch does);
    'bicubic' uses 4 taps with Keys' kernel (A = -0.75) and edge-replicated neighbours, exactly
    torch.nn.functional.interpolate(mode='bicubic', antialias=False)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    o = np.arange(n_out, dtype=np.float64)                            # (n_out,)
    if align_corners:
        u = o * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    else:
        u = (o + 0.5) * (n_in / n_out) - 0.5
    W = np.zeros((n_out, n_in))                                       # (n_out, n_in)
    rows = np.arange(n_out)
    if method == "bilinear":
        u = np.clip(u, 0.0, n_in - 1)
        i0 = np.floor(u).astype(np.int64)
        t = u - i0                                                    # (n_out,) in [0, 1)
        np.add.at(W, (rows, i0), 1.0 - t)
        np.add.at(W, (rows, np.minimum(i0 + 1, n_in - 1)), t)
        return W
    i0 = np.floor(u).astype(np.int64)
    w = _cubic_weights(u - i0)                                        # (n_out, 4)
    for k in range(4):                                                # taps i0-1 .. i0+2
        np.add.at(W, (rows, np.clip(i0 - 1 + k, 0, n_in - 1)), w[:, k])
    return W


def resize_pos_embed(pos, new_grid: int, method: str = "bilinear",
                     align_corners: bool = True) -> np.ndarray:
    """Learned table (1, 1 + g^2, D) -> (1, 1 + new_grid^2, D) on the host: the CLS row is kept
    as is; the g x g grid of patch rows is resampled separably with interp_matrix (the defaults,
    bilinear with aligned corners, reproduce vit_jax's scipy.ndimage.zoom(order=1))."""
    pos = backend.to_numpy(pos)
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise ValueError(f"expected a position table of shape (1, N, D), got {pos.shape}")
    if not isinstance(new_grid, (int, np.integer)) or isinstance(new_grid, bool) or new_grid < 1:
        raise ValueError(f"new_grid must be a positive integer, got {new_grid!r}")
    _, N, D = pos.shape
    g = math.isqrt(N - 1)
    if g * g != N - 1 or g == 0:
        raise ValueError(f"position table has N={N} rows, which is not 1 (CLS) + grid^2; only "
                         f"square grids with a CLS row can be resized")
    if new_grid == g:
        return pos.copy()
    W = interp_matrix(g, int(new_grid), method, align_corners)       # (g', g)
    grid = pos[0, 1:].reshape(g, g, D).astype(np.float64)            # (g, g, D)
    grid = np.einsum("ai,ijd->ajd", W, grid)                          # (g', g, D): rows
    grid = np.einsum("bj,ajd->abd", W, grid)                          # (g', g', D): columns
    rows = grid.reshape(1, new_grid * new_grid, D)                    # (1, g'^2, D)
    return np.concatenate([pos[:, :1], rows.astype(pos.dtype)], axis=1)  # (1, 1 + g'^2, D)


def set_image_size(model: ViT, image_size: int, method: str = "bilinear",
                   align_corners: bool = True) -> ViT:
    """Run the model at image_size x image_size: resample its learned position table (or rebuild
    the fixed sincos table) for the new grid; updates config, params and grads. In place."""
    cfg = dataclasses.replace(model.config, image_size=image_size)   # validates divisibility
    if cfg.pos_embed == "learned":
        pos = model.params["pos_embed"]
        new = resize_pos_embed(pos, cfg.grid, method, align_corners)  # (1, N', D) host
        xp = backend.xp_of(pos)
        model.params["pos_embed"] = xp.asarray(new, dtype=pos.dtype)
        model.grads["pos_embed"] = xp.zeros_like(model.params["pos_embed"])
    else:
        model.pos_table = backend.xp_of(model.params["head.w"]).asarray(
            sincos_2d(cfg.grid, cfg.dim, cfg.dtype))
    model.config = cfg
    model._caches = None                                              # stale after a reshape
    return model


def replace_head(model: ViT, num_classes: int, keep_pre_logits: bool = False) -> ViT:
    """New task head, zero-initialized (weights and bias 0) as in the ViT paper's fine-tuning.
    By default the tanh pre-logits layer is dropped too, so the head is D x K (vit_jax's
    'drop-head variant'); keep_pre_logits=True keeps it and replaces only the R x K layer.
    In place; returns the model."""
    cfg = dataclasses.replace(model.config, num_classes=num_classes)  # validates num_classes
    if not keep_pre_logits and cfg.representation_size:
        for k in ("pre_logits.w", "pre_logits.b"):
            del model.params[k], model.grads[k]
        cfg = dataclasses.replace(cfg, representation_size=None)
    w = model.params["head.w"]
    xp = backend.xp_of(w)
    R = cfg.representation_size or cfg.dim
    for k, shape in (("head.w", (R, num_classes)), ("head.b", (num_classes,))):
        model.params.pop(k), model.grads.pop(k)                       # re-added last, in order
        model.params[k] = xp.zeros(shape, dtype=w.dtype)
        model.grads[k] = xp.zeros(shape, dtype=w.dtype)
    model.config = cfg
    model._caches = None
    return model


def trainable_keys(model: ViT, head_only: bool = False) -> list[str]:
    """Parameter names to train: all of them, or with head_only just head.w and head.b."""
    if not head_only:
        return list(model.params)
    return [k for k in model.params if k.startswith("head.")]


def frozen_keys(model: ViT, head_only: bool = True) -> set[str]:
    """The complement of trainable_keys: names an optimizer's `frozen` set should skip."""
    return set(model.params) - set(trainable_keys(model, head_only))
