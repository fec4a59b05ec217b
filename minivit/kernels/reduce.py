"""Reductions over a short axis (LayerNorm over D, softmax over keys), written for speed.

NumPy reduces a short contiguous last axis (16-128 elements) 5-20x slower than it multiplies.
So on NumPy a sum or mean over the last axis of (..., D) is one matrix-vector product with a
constant column, and a sum down the first axis of a wide (N, R) array is one with a constant row
(softmax keeps its keys on that first axis, see attention.py). Each helper returns a shape that
broadcasts against its input. CuPy takes the plain reductions.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import backend


@functools.lru_cache(maxsize=64)
def _constant(n: int, value: float, dtype) -> np.ndarray:
    """A read-only (n,) vector of `value`, made once per (n, value, dtype)."""
    v = np.full(n, value, dtype=dtype)
    v.flags.writeable = False
    return v


def row_sum(x, scale: float = 1.0):
    """scale * sum(x, axis=-1, keepdims=True), as (M, D) @ (D,) on NumPy."""
    if backend.xp_of(x) is not np:
        s = x.sum(-1, keepdims=True)
        return s if scale == 1.0 else s * scale
    D = x.shape[-1]
    return (x.reshape(-1, D) @ _constant(D, scale, x.dtype)).reshape(*x.shape[:-1], 1)


def row_mean(x):
    """mean(x, axis=-1, keepdims=True)."""
    return row_sum(x, 1.0 / x.shape[-1])


def col_sum(x2):
    """sum(x2, axis=0) of a 2-D (M, D) array, as ones @ x2 (a BLAS GEMV) on NumPy."""
    if backend.xp_of(x2) is not np:
        return x2.sum(0)
    return _constant(x2.shape[0], 1.0, x2.dtype) @ x2
