"""LayerNorm as the encoder block's fast kernels use it: layers/norm.py's layernorm in two parts,

    layernorm(x) = normalize(x) * w + b,

normalize's row means taken as matrix-vector products (reduce.py), its GPU backward one fused
kernel. In the encoder block each LayerNorm feeds a linear layer (qkv, fc1), and there the affine part
can go two ways (affine_into_linear_*): onto the rows, xhat * w + b, or folded into the layer's
weights (fold_affine_*): (xhat * w + b) @ W + c = xhat @ W' + c'. The function is the same; the
work is not: the rows' way costs two (rows, D) operations forward and four backward (dy * w,
dy * xhat and their two column sums), the folded way a few (D, F) ones on the weights. The
block takes the smaller: folded when the rows outnumber the layer's F outputs (many images,
narrow layers), on the rows otherwise (wide layers, small batches).
"""
from __future__ import annotations

import numpy as np

from typing import NamedTuple

from .. import backend
from . import fused
from .reduce import col_sum, row_mean, row_sum


def normalize_forward(x, eps: float = 1e-6):
    """xhat = (x - mean(x)) * rstd, rstd = 1/sqrt(var(x) + eps), over the last axis.
    d: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dxhat."""
    xhat = x - row_mean(x)                                # (..., D) centred
    var = row_mean(xhat * xhat)                           # (..., 1)
    var += eps
    rstd = var ** -0.5                                    # (..., 1)
    xhat *= rstd                                          # (..., D)
    return xhat, (xhat, rstd)


def normalize_backward(g, cache):
    xhat, rstd = cache
    gxhat_mean = row_mean(g * xhat)                       # (..., 1)
    if backend.xp_of(g) is not np:                        # GPU: one fused pass
        return fused.layernorm_dx(g, xhat, rstd, row_mean(g), gxhat_mean)
    dx = g - row_mean(g)                                  # (..., D)
    dx -= xhat * gxhat_mean
    dx *= rstd                                            # rstd (g - mean g - xhat mean(g xhat))
    return dx


def fold_affine_forward(w, b, W, c):
    """The affine of a LayerNorm folded into the linear (W (D, F), c (F,)) that reads it:
        (xhat * w + b) @ W + c = xhat @ W' + c',   W' = w[:, None] * W,   c' = b @ W + c.
    d: dW = w[:, None] * dW' + b[:, None] * dc';  dw = sum_j W * dW';  db = W @ dc';  dc = dc'."""
    return (fold_affine_weight((w, b, W)), b @ W + c), (w, b, W)   # (D, F), (F,)


def fold_affine_weight(cache):
    """W' = w[:, None] * W again from fold_affine_forward's cache (the same bits)."""
    w, _, W = cache
    return w[:, None] * W                                 # (D, F)


def fold_affine_backward(dW2, dc2, cache):
    """Returns dw, db, dW, dc."""
    w, b, W = cache
    dW = w[:, None] * dW2                                 # (D, F)
    dW += b[:, None] * dc2                                # c' = b @ W + c also depends on W
    return row_sum(W * dW2)[:, 0], W @ dc2, dW, dc2       # (D,) (D,) (D, F) (F,)


class AffineCache(NamedTuple):
    """How a LayerNorm's affine met the linear layer after it (affine_into_linear_forward)."""
    w: object           # (D,) LayerNorm scale
    b: object           # (D,) LayerNorm shift
    W: object           # (D, F) the linear's weights (a parameter: no copy)
    folded: bool        # True: folded into W; False: applied to the rows


def affine_into_linear_forward(xhat, w, b, W, c, fold=None):
    """The affine of a LayerNorm, xhat * w + b, feeding a linear layer (W (D, F), c (F,)).
    Returns what the linear reads, (input, weight, bias), by one of two routes to one function:
        folded:      xhat,          w[:, None] * W,  b @ W + c      (D, F) work
        on the rows: xhat * w + b,  W,               c              (rows, D) work
    fold=None takes the smaller, folded when rows >= F; True or False force a route.
    d: folded, fold_affine_backward; on the rows, dxhat = dh * w, dw = sum(dh * xhat),
    db = sum(dh) over the rows, and dW, dc are the linear's own."""
    rows = xhat.size // xhat.shape[-1]
    folded = rows >= W.shape[1] if fold is None else bool(fold)
    cache = AffineCache(w, b, W, folded)
    if folded:
        (W2, c2), _ = fold_affine_forward(w, b, W, c)
        return xhat, W2, c2, cache
    return _affine(xhat, w, b), W, c, cache


def affine_linear_inputs(xhat, cache: AffineCache) -> tuple:
    """The linear's input and weight again, the same bits as the forward's (so a cache need not
    keep either): (xhat, w[:, None] * W) folded, (xhat * w + b, W) on the rows."""
    if cache.folded:
        return xhat, fold_affine_weight((cache.w, cache.b, cache.W))
    return _affine(xhat, cache.w, cache.b), cache.W


def affine_into_linear_backward(dh, dW2, dc2, xhat, cache: AffineCache) -> tuple:
    """dh: dL/d(the linear's input); dW2, dc2: the linear's weight and bias gradients.
    Returns dxhat, dw, db, dW, dc."""
    if cache.folded:
        return (dh,) + fold_affine_backward(dW2, dc2, (cache.w, cache.b, cache.W))
    D = xhat.shape[-1]
    dw = col_sum((dh * xhat).reshape(-1, D))             # (D,)
    db = col_sum(dh.reshape(-1, D))                       # (D,)
    return dh * cache.w, dw, db, dW2, dc2


def _affine(xhat, w, b):
    y = xhat * w                                          # (..., D)
    y += b
    return y
