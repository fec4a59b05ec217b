"""LayerNorm over the last axis (biased variance, affine)."""
from __future__ import annotations


def layernorm_forward(x, w, b, eps: float = 1e-6):
    """y = w * xhat + b, xhat = (x - mean(x)) * rstd, rstd = 1/sqrt(var(x) + eps), over the last axis.
    d: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w;  dw = sum(dy * xhat);  db = sum(dy)."""
    mu = x.mean(-1, keepdims=True)                        # (..., 1)
    xc = x - mu                                           # (..., D)
    var = (xc * xc).mean(-1, keepdims=True)               # (..., 1)
    rstd = (var + eps) ** -0.5                            # (..., 1)
    xhat = xc * rstd                                      # (..., D)
    y = xhat * w + b                                      # (..., D)
    return y, (xhat, w, rstd)


def layernorm_backward(dy, cache):
    xhat, w, rstd = cache
    D = xhat.shape[-1]
    g = dy * w                                            # (..., D)
    dx = rstd * (g - g.mean(-1, keepdims=True)
                 - xhat * (g * xhat).mean(-1, keepdims=True))   # (..., D)
    dw = (dy * xhat).reshape(-1, D).sum(0)                # (D,)
    db = dy.reshape(-1, D).sum(0)                         # (D,)
    return dx, dw, db
