"""The linear pair of layers/linear.py with its bias column sum as one matrix-vector product on
NumPy (reduce.col_sum) and the bias added in place: the same function, cache and gradients."""
from __future__ import annotations

from .reduce import col_sum


def linear_forward(x, w, b):
    """y = x @ w + b, x (..., Din), w (Din, Dout), b (Dout,); cache (x2, w, x.shape)."""
    x2 = x.reshape(-1, x.shape[-1])                       # (M, Din)
    y = x2 @ w                                            # (M, Dout)
    y += b
    return y.reshape(*x.shape[:-1], w.shape[1]), (x2, w, x.shape)


def linear_backward(dy, cache):
    """dx = dy @ w^T, dw = x^T @ dy, db = ones @ dy."""
    x2, w, x_shape = cache
    dy2 = dy.reshape(-1, dy.shape[-1])                    # (M, Dout)
    return (dy2 @ w.T).reshape(x_shape), x2.T @ dy2, col_sum(dy2)
