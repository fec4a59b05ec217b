"""GELU, tanh approximation and exact erf form; tanh (for the optional pre-logits layer)."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from . import fused

_C = math.sqrt(2.0 / math.pi)       # sqrt(2/pi)
_A = 0.044715
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_tanh_forward(x):
    """y = 0.5 x (1 + t), t = tanh(u), u = c (x + a x^3), c = sqrt(2/pi), a = 0.044715.
    d: dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2)."""
    xp = backend.xp_of(x)
    if xp is not np:                                      # one fused GPU kernel, same formula
        y, t = fused.gelu_tanh_forward(x)
        return y, (x, t)
    t = x * x                                             # (...), in place from here on
    t *= _A * _C
    t += _C
    t *= x                                                # u = c (x + a x^3)
    xp.tanh(t, out=t)
    y = t + 1.0
    y *= x
    y *= 0.5
    return y, (x, t)


def gelu_tanh_backward(dy, cache):
    x, t = cache
    if backend.xp_of(x) is not np:
        return fused.gelu_tanh_backward(dy, x, t)
    g = x * x
    g *= 3.0 * _A * _C
    g += _C                                               # du/dx = c (1 + 3 a x^2)
    g *= 1.0 - t * t
    g *= x
    g += 1.0 + t
    g *= 0.5                                              # 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx
    g *= dy
    return g


def gelu_erf_forward(x):
    """y = x Phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2)).
    d: dy/dx = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    phi_cdf = 0.5 * (1.0 + backend.erf(x * _INV_SQRT2))  # (...)
    return x * phi_cdf, (x, phi_cdf)


def gelu_erf_backward(dy, cache):
    x, phi_cdf = cache
    xp = backend.xp_of(x)
    pdf = _INV_SQRT2PI * xp.exp(-0.5 * (x * x))
    return dy * (phi_cdf + x * pdf)


GELU = {"tanh": (gelu_tanh_forward, gelu_tanh_backward),
        "erf": (gelu_erf_forward, gelu_erf_backward)}


def tanh_forward(x):
    """y = tanh(x).  d: dx = dy (1 - y^2)."""
    y = backend.xp_of(x).tanh(x)
    return y, y


def tanh_backward(dy, y):
    return dy * (1.0 - y * y)
