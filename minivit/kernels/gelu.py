"""The GELU, fast: the tanh form through exp, in cache-sized chunks; the erf form's normal CDF in
float32 without erf; one fused kernel each on the GPU. Same functions as layers/activations.py
(tests/kernels prove them equal).

The tanh GELU is computed as y = x s, s = 0.5 (1 + tanh u) = 1 / (1 + exp(-2u)): the same
function, and exp costs NumPy about half of tanh. On NumPy a large input goes by in chunks of
CHUNK numbers so that each chunk's passes stay in the core's cache; every number gets the same
operations either way. Its cache is (x, s), or (x, None) above KEEP_S_MAX numbers: s is then
remade from x by the same operations (the same bits) when backward needs it, one activation of
the MLP's width less held per block in training.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..layers.activations import A_TANH as _A, C_TANH as _C, INV_SQRT2 as _INV_SQRT2, INV_SQRT2PI as _INV_SQRT2PI
from ..layers.activations import normal_cdf as reference_normal_cdf
from . import fused

CHUNK = 1 << 16       # numbers per chunk of the NumPy elementwise loops
KEEP_S_MAX = 1 << 20  # the NumPy tanh GELU's cache keeps s up to this many numbers


def gelu_tanh_forward(x):
    """y = x s, s = 1 / (1 + exp(-2u)) = 0.5 (1 + tanh u), u = c (x + a x^3): the tanh GELU.
    d: dy/dx = s + x s (1 - s) 2c (1 + 3 a x^2)   (ds/du = 2 s (1 - s)).
    Cache (x, s), or (x, None) above KEEP_S_MAX numbers on NumPy (module docstring)."""
    xp = backend.xp_of(x)
    if xp is not np:                                      # one fused GPU kernel, same formula
        y, s = fused.gelu_tanh_forward(x)
        return y, (x, s)
    xf = x.reshape(-1)                                    # (n,)
    chunks = _chunks(xf.size)
    keep = xf.size <= KEEP_S_MAX
    s = np.empty_like(xf) if keep else np.empty(chunks[0][1], dtype=xf.dtype)   # all, or scratch
    y = np.empty_like(xf)
    for a, b in chunks:
        sc = s[a:b] if keep else s[:b - a]
        _tanh_gelu_s(xf[a:b], sc)
        np.multiply(xf[a:b], sc, out=y[a:b])              # y = x s
    return y.reshape(x.shape), (x, s.reshape(x.shape) if keep else None)


def _tanh_gelu_s(x, s) -> None:
    """s = 1 / (1 + exp(-2u)), u = c (x + a x^3), written into s (x and s: (n,) chunks)."""
    with np.errstate(over="ignore", under="ignore"):      # exp(-2u) = inf for x below about -9
        np.multiply(x, x, out=s)                          # (float32): s = 0 there, y = x s = -0
        s *= -2.0 * _A * _C
        s -= 2.0 * _C
        s *= x                                            # -2u
        np.exp(s, out=s)
        s += 1.0
        np.divide(1.0, s, out=s)


def gelu_remake(cache) -> tuple:
    """Either GELU's full cache (x, s) from what its forward kept: s remade from x when the
    tanh GELU left it out (the same bits as the forward's own s)."""
    x, s = cache
    if s is not None:
        return cache
    xf = x.reshape(-1)
    s = np.empty_like(xf)
    for a, b in _chunks(xf.size):
        _tanh_gelu_s(xf[a:b], s[a:b])
    return x, s.reshape(x.shape)


def gelu_tanh_backward(dy, cache):
    x, s = gelu_remake(cache)
    if backend.xp_of(x) is not np:
        return fused.gelu_tanh_backward(dy, x, s)
    xf, sf, dyf = x.reshape(-1), s.reshape(-1), dy.reshape(-1)   # (n,)
    g = np.empty_like(xf)
    chunks = _chunks(xf.size)
    t = np.empty(chunks[0][1], dtype=xf.dtype)            # scratch: 1 - s of a chunk
    for a, b in chunks:
        xc, sc, gc, tc = xf[a:b], sf[a:b], g[a:b], t[:b - a]
        np.multiply(xc, xc, out=gc)
        gc *= 6.0 * _A * _C
        gc += 2.0 * _C                                    # 2 du/dx = 2c (1 + 3 a x^2)
        gc *= xc
        gc *= np.subtract(1.0, sc, out=tc)
        gc += 1.0
        gc *= sc                                          # s (1 + x (1 - s) 2 du/dx)
        gc *= dyf[a:b]
    return g.reshape(x.shape)


def _chunks(n: int) -> list:
    """(start, stop) pairs covering range(n): one pair up to 4 CHUNKs (a small input gains
    nothing from chunks and would pay their calls), else CHUNK numbers each."""
    if n <= 4 * CHUNK:
        return [(0, n)]
    return [(a, min(a + CHUNK, n)) for a in range(0, n, CHUNK)]


def gelu_in_place(x, gelu: str) -> None:
    """x = gelu(x), overwriting x (inference: no cache): the same bits as GELU[gelu]'s forward
    output, since every number gets the same operations (x s, its s computed a chunk at a time:
    the tanh form's into a scratch chunk, the erf form's Phi(x) by normal_cdf_float32). Where no chunked form applies (CuPy, a strided x, float64 erf) the
    forward runs and its output is copied back."""
    if (backend.xp_of(x) is not np or not x.flags.c_contiguous
            or (gelu == "erf" and x.dtype != np.float32)):
        x[...] = GELU[gelu][0](x)[0]
        return
    xf = x.reshape(-1)                                    # (n,) view
    chunks = _chunks(xf.size)
    s = np.empty(chunks[0][1], dtype=xf.dtype) if gelu == "tanh" else None   # one chunk's s
    for a, b in chunks:
        xc = xf[a:b]
        if gelu == "tanh":
            _tanh_gelu_s(xc, s[:b - a])
            xc *= s[:b - a]                               # y = x s
        else:
            xc *= normal_cdf_float32(xc)                  # y = x Phi(x)


def gelu_erf_forward(x):
    """y = x Phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2)) (normal_cdf).
    d: dy/dx = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    phi_cdf = normal_cdf(x)                               # (...)
    return x * phi_cdf, (x, phi_cdf)


def normal_cdf(x):
    """Phi(x) = 0.5 (1 + erf(x / sqrt 2)), the standard normal CDF, elementwise: float32 on
    NumPy by normal_cdf_float32 (no erf needed); otherwise layers.activations.normal_cdf."""
    if backend.xp_of(x) is np and x.dtype == np.float32:
        return normal_cdf_float32(x)
    return reference_normal_cdf(x)


# normal_cdf_float32's polynomials, fitted in float64 (iteratively reweighted least squares on
# Chebyshev nodes, against math.erfc), coefficients rounded to float32, lowest power first:
_XS = np.float32(1.5)          # |x| < _XS: Phi = 1/2 + x S(x^2), S fitted to 1.4e-9 absolute
_S = tuple(np.float32(c) for c in (
    0.3989422917366028, -0.06649033725261688, 0.00997326709330082, -0.001186536392197013,
    0.00011439687659731135, -8.734135008126032e-06, 4.1388236127204436e-07))
_P = tuple(np.float32(c) for c in (  # |x| >= _XS: erfc(z) = t exp(P(1 - t) - z^2), 2e-9 relative
    -0.0013456677552312613, -1.2343614101409912, -0.465496301651001, 0.8295150995254517,
    -1.5136924982070923, 2.8126273155212402, -2.76776123046875, 1.3248404264450073,
    -0.2498256415128708))


def normal_cdf_float32(x):
    """Phi(x) for a float32 NumPy x, in two branches without erf:
        |x| < 1.5:   Phi = 1/2 + x S(x^2)
        |x| >= 1.5:  r = erfc(z) / 2 = t exp(P(1 - t) - z^2) / 2,  z = |x| / sqrt 2,
                     t = 1 / (1 + z / 2);  Phi = r for x < 0, 1 - r for x > 0
    (S, P: polynomials fitted in float64, above). The first runs on every number, the second
    only on those it is for, in chunks of CHUNK numbers that stay in cache. Error against
    math.erfc over 4 million float32 points in [-14, 8]: at most 1.1e-7 absolute; in the lower
    tail it stays relative, below 1.6e-7 x^2 (from the float32 rounding of x^2 in the exponent),
    where 0.5 (1 + erf(x / sqrt 2)) keeps no relative accuracy (it rounds to a multiple of 6e-8,
    and to 0 below about -5.5). tests/kernels checks both bounds."""
    xf = x.reshape(-1)                                    # (n,)
    out = np.empty_like(xf)
    chunks = _chunks(xf.size)
    s = np.empty(chunks[0][1], dtype=np.float32)          # scratch of a chunk
    with np.errstate(over="ignore", under="ignore"):      # x^2 of |x| > 1.8e19: inf, harmless
        for a, b in chunks:
            xc, oc, sc = xf[a:b], out[a:b], s[:b - a]
            np.multiply(xc, xc, out=sc)
            _horner(_S, sc, oc)
            oc *= xc
            oc += np.float32(0.5)                         # the |x| < 1.5 form, everywhere
            far = np.flatnonzero(np.abs(xc, out=sc) >= _XS)   # where the erfc form is the one
            if far.size:
                oc[far] = _normal_tail(xc[far])
    return out.reshape(x.shape)


def _normal_tail(x):
    """Phi(x) for |x| >= 1.5 through erfc (normal_cdf_float32), x (m,) float32."""
    a = np.abs(x)
    t = a * np.float32(0.5 * _INV_SQRT2)
    t += np.float32(1.0)
    np.divide(np.float32(1.0), t, out=t)                  # t = 1 / (1 + z / 2)
    p = _horner(_P, np.subtract(np.float32(1.0), t), np.empty_like(t))
    a *= a
    a *= np.float32(0.5)                                  # z^2 = x^2 / 2
    p -= a
    np.exp(p, out=p)                                      # far below -13: 0, as it should be
    p *= t
    p *= np.float32(0.5)                                  # r = erfc(z) / 2 = Phi(-|x|)
    np.subtract(np.float32(1.0), p, out=p, where=x > 0)   # Phi(x) = 1 - r above 0
    return p


def _horner(coefs: tuple, v, out):
    """out = sum_j coefs[j] v^j (Horner), v and out (n,) arrays; returns out."""
    np.multiply(v, coefs[-1], out=out)
    out += coefs[-2]
    for c in coefs[-3::-1]:
        out *= v
        out += c
    return out


def gelu_erf_backward(dy, cache):
    x, phi_cdf = cache
    xp = backend.xp_of(x)
    pdf = _INV_SQRT2PI * xp.exp(-0.5 * (x * x))
    return dy * (phi_cdf + x * pdf)


def gelu_output(cache):
    """Either GELU's output y = x s again from its cache (x, s) (gelu_remake): the forward's own
    product, so the same bits (s = 0.5 (1 + tanh u) for the tanh form, Phi(x) for the erf form)."""
    x, s = gelu_remake(cache)
    return x * s


GELU = {"tanh": (gelu_tanh_forward, gelu_tanh_backward),
        "erf": (gelu_erf_forward, gelu_erf_backward)}
