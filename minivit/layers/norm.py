"""LayerNorm over the last axis (biased variance, affine), as two parts:

    layernorm(x) = normalize(x) * w + b

In the encoder block each LayerNorm feeds a linear layer, and there the affine part is folded
into that layer's weights (fold_affine_*): (xhat * w + b) @ W + c = xhat @ W' + c'. The result
is the same; what goes away are two full-size (..., D) operations in the forward pass and four
in the backward (dy * w, dy * xhat and their two column sums), which on NumPy cost more than the
small (D, F) operations on the weights that replace them.
"""
from __future__ import annotations

import numpy as np

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


def layernorm_forward(x, w, b, eps: float = 1e-6):
    """y = xhat * w + b, xhat = normalize(x).
    d: g = dy * w -> normalize's backward;  dw = sum(dy * xhat);  db = sum(dy)."""
    if backend.xp_of(x) is not np:                        # GPU: reductions, then one fused pass
        mu = x.mean(-1, keepdims=True)
        rstd = (((x - mu) ** 2).mean(-1, keepdims=True) + eps) ** -0.5
        xhat, y = fused.layernorm_affine(x, mu, rstd, w, b)
        return y, ((xhat, rstd), w)
    xhat, c_norm = normalize_forward(x, eps)
    y = xhat * w                                          # (..., D)
    y += b
    return y, (c_norm, w)


def layernorm_backward(dy, cache):
    c_norm, w = cache
    xhat, D = c_norm[0], w.shape[0]
    dx = normalize_backward(dy * w, c_norm)               # (..., D)
    dw = col_sum((dy * xhat).reshape(-1, D))              # (D,)
    db = col_sum(dy.reshape(-1, D))                       # (D,)
    return dx, dw, db


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
