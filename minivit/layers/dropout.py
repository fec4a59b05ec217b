"""Dropout and stochastic depth (drop path): identity unless a rate > 0 and a generator are given."""
from __future__ import annotations


def dropout_forward(x, rate: float, rng=None):
    """y = x * m / (1 - rate), m ~ Bernoulli(1 - rate) per element.  d: dx = dy * m / (1 - rate).
    With rate 0 or no generator (evaluation) it is the identity and the mask is None."""
    if rate == 0.0 or rng is None:
        return x, None
    mask = (rng.random(x.shape, dtype=x.dtype) >= rate).astype(x.dtype)
    mask *= 1.0 / (1.0 - rate)                            # scaled mask, same shape as x
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy if mask is None else dy * mask


def drop_path_forward(x, rate: float, rng=None):
    """Stochastic depth on a residual branch x (B, ...): y = x * m_b / (1 - rate), one Bernoulli
    m_b per sample.  d: dx = dy * m_b / (1 - rate)."""
    if rate == 0.0 or rng is None:
        return x, None
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)           # (B, 1, 1)
    mask = (rng.random(shape, dtype=x.dtype) >= rate).astype(x.dtype)
    mask *= 1.0 / (1.0 - rate)
    return x * mask, mask


drop_path_backward = dropout_backward
