"""LayerNorm over the last axis (biased variance), with a learned scale and shift."""
from __future__ import annotations


def layernorm_forward(x, w, b, eps: float = 1e-6):
    """y = xhat * w + b, xhat = (x - mean(x)) * rstd, rstd = 1 / sqrt(var(x) + eps), over the
    last axis of x (..., D).
    d: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w;
       dw = sum(dy * xhat), db = sum(dy) over every leading axis."""
    xc = x - x.mean(-1, keepdims=True)                    # (..., D) centred
    rstd = ((xc * xc).mean(-1, keepdims=True) + eps) ** -0.5   # (..., 1)
    xhat = xc * rstd                                      # (..., D)
    return xhat * w + b, (xhat, rstd, w)                  # (..., D)


def layernorm_backward(dy, cache):
    xhat, rstd, w = cache
    D = w.shape[0]
    g = dy * w                                            # (..., D) dL/dxhat
    dx = rstd * (g - g.mean(-1, keepdims=True)
                 - xhat * (g * xhat).mean(-1, keepdims=True))   # (..., D)
    dw = (dy * xhat).reshape(-1, D).sum(0)                # (D,)
    db = dy.reshape(-1, D).sum(0)                         # (D,)
    return dx, dw, db
