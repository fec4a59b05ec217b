"""GELU in its two forms (tanh approximation, exact erf), and tanh for the pre-logits layer."""
from __future__ import annotations

import math

from .. import backend

C_TANH = math.sqrt(2.0 / math.pi)   # c in the tanh GELU
A_TANH = 0.044715                   # a in the tanh GELU
INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_tanh_forward(x):
    """y = 0.5 x (1 + tanh(u)), u = c (x + a x^3), c = sqrt(2/pi), a = 0.044715.
    d: dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2), t = tanh(u)."""
    xp = backend.xp_of(x)
    t = xp.tanh(C_TANH * (x + A_TANH * (x * x * x)))      # (...)
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_tanh_backward(dy, cache):
    x, t = cache
    du = C_TANH * (1.0 + 3.0 * A_TANH * (x * x))          # du/dx
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)


def normal_cdf(x):
    """Phi(x) = 0.5 (1 + erf(x / sqrt 2)), the standard normal CDF, elementwise
    (backend.erf: SciPy's when installed, else math.erf one number at a time; CuPy's on a GPU)."""
    return 0.5 * (1.0 + backend.erf(x * INV_SQRT2))


def gelu_erf_forward(x):
    """y = x Phi(x), Phi the standard normal CDF.
    d: dy/dx = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    cdf = normal_cdf(x)                                   # (...)
    return x * cdf, (x, cdf)


def gelu_erf_backward(dy, cache):
    x, cdf = cache
    pdf = INV_SQRT2PI * backend.xp_of(x).exp(-0.5 * (x * x))   # (...)
    return dy * (cdf + x * pdf)


GELU = {"tanh": (gelu_tanh_forward, gelu_tanh_backward),
        "erf": (gelu_erf_forward, gelu_erf_backward)}


def tanh_forward(x):
    """y = tanh(x).  d: dx = dy (1 - y^2)."""
    y = backend.xp_of(x).tanh(x)
    return y, y


def tanh_backward(dy, y):
    return dy * (1.0 - y * y)
