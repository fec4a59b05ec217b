"""LayerNorm over the last axis (biased variance, affine)."""
from __future__ import annotations

from .reduce import col_sum, row_mean


def layernorm_forward(x, w, b, eps: float = 1e-6):
    """y = w * xhat + b, xhat = (x - mean(x)) * rstd, rstd = 1/sqrt(var(x) + eps), over the last axis.
    d: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w;  dw = sum(dy * xhat);  db = sum(dy)."""
    xhat = x - row_mean(x)                                # (..., D) centred
    var = row_mean(xhat * xhat)                           # (..., 1)
    var += eps
    rstd = var ** -0.5                                    # (..., 1)
    xhat *= rstd                                          # (..., D)
    y = xhat * w                                          # (..., D)
    y += b
    return y, (xhat, w, rstd)


def layernorm_backward(dy, cache):
    xhat, w, rstd = cache
    D = xhat.shape[-1]
    g = dy * w                                            # (..., D)
    dx = g - row_mean(g)                                  # (..., D)
    dx -= xhat * row_mean(g * xhat)
    dx *= rstd                                            # rstd (g - mean g - xhat mean(g xhat))
    dw = col_sum((dy * xhat).reshape(-1, D))              # (D,)
    db = col_sum(dy.reshape(-1, D))                       # (D,)
    return dx, dw, db
