"""Fused CuPy kernels for the elementwise chains of GELU, LayerNorm's backward and softmax.

Constants are cast to the kernel's type T, so float32 kernels never compute in double (which
runs at a fraction of the float32 rate on many GPUs).
On the GPU every NumPy-style expression launches one kernel and writes one temporary, so a
chain like GELU's backward (eight operations) is memory-bound eight times over. Each kernel
here does the whole chain in one pass. The pairs in layers/ remain the reference:
tests/kernels/test_fused.py compares each kernel with them on a GPU.
Kernels are compiled on first use through backend.cupy() (this module does not import cupy).
"""
from __future__ import annotations

import math

from .. import backend

_cache = {}


def _elementwise(name: str, in_params: str, out_params: str, body: str):
    if name not in _cache:
        _cache[name] = backend.cupy().ElementwiseKernel(in_params, out_params, body,
                                                        "minivit_" + name)
    return _cache[name]


_C = repr(math.sqrt(2.0 / math.pi))
_A = "0.044715"


def gelu_tanh_forward(x):
    """y = x s, s = 1 / (1 + exp(-2u)) = 0.5 (1 + tanh u), u = c (x + a x^3); returns y and s
    (the cache, as on the CPU)."""
    k = _elementwise("gelu_tanh_fwd", "T x", "T y, T s",
                     f"T u = (T)({_C}) * (x + (T){_A} * x * x * x); "
                     f"s = (T)1 / ((T)1 + exp((T)-2 * u)); y = x * s;")
    return k(x)


def gelu_tanh_backward(dy, x, s):
    """dx = dy (s + x s (1 - s) 2c (1 + 3 a x^2))."""
    k = _elementwise("gelu_tanh_bwd", "T dy, T x, T s", "T dx",
                     f"dx = dy * (s + x * s * ((T)1 - s) * (T)(2 * {_C}) "
                     f"* ((T)1 + (T)3 * (T){_A} * x * x));")
    return k(dy, x, s)


def layernorm_dx(g, xhat, rstd, mean_g, mean_gx):
    """dx = rstd (g - mean(g) - xhat mean(g xhat))."""
    k = _elementwise("ln_dx", "T g, T xhat, T rstd, T mg, T mgx", "T dx",
                     "dx = rstd * (g - mg - xhat * mgx);")
    return k(g, xhat, rstd, mean_g, mean_gx)


def softmax_exp(s, m):
    """e = exp(s - m), m the row maximum (..., 1)."""
    k = _elementwise("softmax_exp", "T s, T m", "T e", "e = exp(s - m);")
    return k(s, m)


def softmax_dx(dp, p, dot):
    """ds = p (dp - dot), dot = sum(dp p) over the row (..., 1)."""
    k = _elementwise("softmax_dx", "T dp, T p, T dot", "T ds", "ds = p * (dp - dot);")
    return k(dp, p, dot)
