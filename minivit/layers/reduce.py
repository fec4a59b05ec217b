"""Reductions over a short last axis (LayerNorm over D, softmax over keys), written for speed.

NumPy reduces a short contiguous last axis (16-128 elements) 5-20x slower than it multiplies:
a row sum is faster as a matrix-vector product with a ones vector, and a row max is faster on a
transposed copy reduced over its first axis (one vectorized maximum across rows). Each helper
returns (..., 1) so the result broadcasts against x. CuPy takes the plain reductions.
"""
from __future__ import annotations

import numpy as np

from .. import backend


def row_sum(x):
    """sum(x, axis=-1, keepdims=True), as x @ ones."""
    xp = backend.xp_of(x)
    if xp is not np:
        return x.sum(-1, keepdims=True)
    return (x @ np.ones(x.shape[-1], dtype=x.dtype))[..., None]


def row_mean(x):
    """mean(x, axis=-1, keepdims=True)."""
    s = row_sum(x)
    s *= 1.0 / x.shape[-1]
    return s


def row_max(x):
    """max(x, axis=-1, keepdims=True), reduced over the leading axis of a transposed copy."""
    xp = backend.xp_of(x)
    if xp is not np:
        return x.max(-1, keepdims=True)
    n = x.shape[-1]
    return np.ascontiguousarray(x.reshape(-1, n).T).max(0).reshape(*x.shape[:-1], 1)


def col_sum(x2):
    """sum(x2, axis=0) of a 2-D (M, D) array, as ones @ x2 (a BLAS GEMV) on NumPy."""
    if backend.xp_of(x2) is not np:
        return x2.sum(0)
    return np.ones(x2.shape[0], dtype=x2.dtype) @ x2
