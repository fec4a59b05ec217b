"""LayerNorm over the last axis (biased variance, affine)."""
from __future__ import annotations

import numpy as np

from .. import backend
from . import fused
from .reduce import col_sum, row_mean


def layernorm_forward(x, w, b, eps: float = 1e-6):
    """y = w * xhat + b, xhat = (x - mean(x)) * rstd, rstd = 1/sqrt(var(x) + eps), over the last axis.
    d: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w;  dw = sum(dy * xhat);  db = sum(dy)."""
    if backend.xp_of(x) is not np:                        # GPU: reductions, then one fused pass
        mu = x.mean(-1, keepdims=True)
        rstd = (((x - mu) ** 2).mean(-1, keepdims=True) + eps) ** -0.5
        xhat, y = fused.layernorm_affine(x, mu, rstd, w, b)
        return y, (xhat, w, rstd)
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
    if backend.xp_of(g) is not np:
        dx = fused.layernorm_dx(g, xhat, rstd, g.mean(-1, keepdims=True),
                                (g * xhat).mean(-1, keepdims=True))
    else:
        dx = g - row_mean(g)                              # (..., D)
        dx -= xhat * row_mean(g * xhat)
        dx *= rstd                                        # rstd (g - mean g - xhat mean(g xhat))
    dw = col_sum((dy * xhat).reshape(-1, D))              # (D,)
    db = col_sum(dy.reshape(-1, D))                       # (D,)
    return dx, dw, db
