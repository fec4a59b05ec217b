"""Linear layer, y = x @ w + b, applied to the last axis of any (..., Din) input."""
from __future__ import annotations


def linear_forward(x, w, b):
    """y = x @ w + b, with x (..., Din), w (Din, Dout), b (Dout,).
    d: dx = dy @ w^T,  dw = x^T @ dy,  db = sum(dy) over every leading axis."""
    x2 = x.reshape(-1, x.shape[-1])                       # (M, Din), M = prod(leading)
    y = x2 @ w + b                                        # (M, Dout), one GEMM
    return y.reshape(*x.shape[:-1], w.shape[1]), (x2, w, x.shape)


def linear_backward(dy, cache):
    x2, w, x_shape = cache
    dy2 = dy.reshape(-1, dy.shape[-1])                    # (M, Dout)
    dx = (dy2 @ w.T).reshape(x_shape)                     # (..., Din)
    dw = x2.T @ dy2                                       # (Din, Dout)
    db = dy2.sum(0)                                       # (Dout,)
    return dx, dw, db
