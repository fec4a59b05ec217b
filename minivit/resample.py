"""Interpolation matrices, used to resample position tables (ViT.set_image_size), images
(data/imagefolder.py) and attention maps (analysis/attention.py).

    W = interp_matrix(n_in, n_out, "bicubic")     # (n_out, n_in): y = W @ x
    pos = resize_pos_embed(pos, new_grid)          # (1, 1 + g^2, D) -> (1, 1 + g'^2, D)
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .errors import UserError

__all__ = ["interp_matrix", "resize_pos_embed"]

METHODS = ("bilinear", "bicubic")
CUBIC_A = -0.75     # Keys' cubic convolution parameter used by PyTorch/timm 'bicubic'
CUBIC_A_AA = -0.5   # the one PyTorch's antialiased bicubic uses (as PIL does)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys cubic-convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fractions t (M,).
    w(s) = ((A+2)|s| - (A+3)) s^2 + 1            for |s| <= 1,
    w(s) = ((A|s| - 5A)|s| + 8A)|s| - 4A          for 1 < |s| < 2."""
    A = CUBIC_A
    s = np.stack([1.0 + t, t, 1.0 - t, 2.0 - t], axis=1)             # (M, 4) distances |s|
    near = ((A + 2.0) * s - (A + 3.0)) * s * s + 1.0
    far = ((A * s - 5.0 * A) * s + 8.0 * A) * s - 4.0 * A
    return np.where(s <= 1.0, near, far)                              # (M, 4)


def _cubic(s: np.ndarray, A: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distances s (any shape), zero beyond |s| = 2."""
    s = np.abs(s)
    near = ((A + 2.0) * s - (A + 3.0)) * s * s + 1.0
    far = ((A * s - 5.0 * A) * s + 8.0 * A) * s - 4.0 * A
    return np.where(s < 1.0, near, np.where(s < 2.0, far, 0.0))


def _antialias_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """torch.nn.functional.interpolate(..., align_corners=False, antialias=True) as a matrix:
    when shrinking (scale = n_in / n_out > 1) the kernel is stretched by the scale, so every
    input sample within its support contributes; taps outside the signal are dropped and each
    row renormalized to sum 1 (no edge replication). Bicubic uses A = -0.5 here."""
    scale = n_in / n_out
    support = (2.0 if method == "bicubic" else 1.0) * max(scale, 1.0)
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    W = np.zeros((n_out, n_in))                                       # (n_out, n_in)
    for o in range(n_out):
        center = scale * (o + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        d = (np.arange(lo, hi) - center + 0.5) * inv                  # (taps,)
        w = _cubic(d, CUBIC_A_AA) if method == "bicubic" else np.maximum(0.0, 1.0 - np.abs(d))
        total = w.sum()
        W[o, lo:hi] = w / total if total != 0 else w
    return W


def interp_matrix(n_in: int, n_out: int, method: str = "bilinear",
                  align_corners: bool = True, antialias: bool = False) -> np.ndarray:
    """(n_out, n_in) matrix W with y = W @ x resampling a length-n_in signal to n_out samples.

    Source coordinate of output sample o:
      align_corners=True:  u = o (n_in - 1) / (n_out - 1)  (end samples aligned; what
                           scipy.ndimage.zoom(order=1) does, used by the vit_jax fine-tuning code)
      align_corners=False: u = (o + 1/2) n_in / n_out - 1/2 (pixel areas aligned; PyTorch's default)
    'bilinear' blends the two neighbours of u (u clamped to [0, n_in - 1], as PyTorch does);
    'bicubic' uses 4 taps with Keys' kernel (A = -0.75) and edge-replicated neighbours, exactly
    torch.nn.functional.interpolate(mode='bicubic', antialias=False).
    antialias=True (align_corners must be False) is torch's antialiased variant: see
    _antialias_matrix (timm resamples position tables this way, and DINOv2 with registers)."""
    if method not in METHODS:
        raise UserError(f"method={method!r} is not one of {METHODS}")
    if antialias:
        if align_corners:
            raise UserError("antialias=True is defined with align_corners=False (as in PyTorch)")
        return _antialias_matrix(n_in, n_out, method)
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
                     align_corners: bool = True, prefix: int = 1,
                     antialias: bool = False) -> np.ndarray:
    """Learned table (1, T + g^2, D) -> (1, T + new_grid^2, D) on the host: the T = prefix
    class-token rows (1: CLS; 0: a table of patches only; 2: CLS and distillation) are kept as
    they are; the g x g grid of patch rows is resampled separably with interp_matrix (the
    defaults, bilinear with aligned corners, reproduce vit_jax's scipy.ndimage.zoom(order=1))."""
    pos = backend.to_numpy(pos)
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise UserError(f"expected a position table of shape (1, N, D), got {pos.shape}")
    if not isinstance(new_grid, (int, np.integer)) or isinstance(new_grid, bool) or new_grid < 1:
        raise UserError(f"new_grid must be a positive integer, got {new_grid!r}")
    _, N, D = pos.shape
    T = prefix
    g = math.isqrt(max(N - T, 0))
    if g * g != N - T or g == 0:
        what = {0: "grid^2", 1: "1 (CLS) + grid^2"}.get(T, f"{T} (class tokens) + grid^2")
        raise UserError(f"position table has N={N} rows, which is not {what}; only "
                        f"square grids can be resized")
    if new_grid == g:
        return pos.copy()
    W = interp_matrix(g, int(new_grid), method, align_corners, antialias)   # (g', g)
    grid = pos[0, T:].reshape(g, g, D).astype(np.float64)            # (g, g, D)
    grid = np.einsum("ai,ijd->ajd", W, grid)                          # (g', g, D): rows
    grid = np.einsum("bj,ajd->abd", W, grid)                          # (g', g', D): columns
    rows = grid.reshape(1, new_grid * new_grid, D)                    # (1, g'^2, D)
    return np.concatenate([pos[:, :T], rows.astype(pos.dtype)], axis=1)  # (1, T + g'^2, D)
