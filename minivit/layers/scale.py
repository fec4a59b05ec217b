"""LayerScale (Touvron et al., "Going deeper with Image Transformers", 2021): a residual branch
multiplied channel-wise by a learned vector, started small so each block begins near identity."""
from __future__ import annotations


def layer_scale_forward(x, g):
    """y = x * g, x (..., D), g (D,).  d: dx = dy * g,  dg = sum(dy * x) over every leading axis."""
    return x * g, (x, g)                                  # (..., D)


def layer_scale_backward(dy, cache):
    x, g = cache
    D = g.shape[0]
    dg = (dy * x).reshape(-1, D).sum(0)                   # (D,)
    return dy * g, dg                                     # (..., D), (D,)
