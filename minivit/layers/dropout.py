"""Dropout and stochastic depth (drop path): identity unless a rate > 0 and a generator are given.

The masks come from `rng`: a backend Generator, or a BatchRows, which defines every mask over a
whole batch and hands out the rows of one piece of it, so that a batch split over worker threads
or processes draws exactly the masks one pass over the whole batch would.
"""
from __future__ import annotations

from .. import backend


class BatchRows:
    """Masks for rows [start, stop) of a batch of `total` samples: each draw makes the uniform
    numbers of the whole batch from a generator seeded with `seed`, then keeps this piece's rows
    along the batch axis. Pieces holding BatchRows with the same seed (and making the same draws
    in the same order) agree with a single pass over the whole batch, whatever the split; each
    piece draws the whole batch's numbers, a cost paid only when a dropout rate is set."""

    def __init__(self, seed: int, start: int, stop: int, total: int):
        if not 0 <= start <= stop <= total:
            raise ValueError(f"rows [{start}, {stop}) do not lie in a batch of {total}")
        self.gen = backend.rng(seed)
        self.start, self.stop, self.total = int(start), int(stop), int(total)

    def random(self, shape, dtype, batch_axis: int = 0):
        full = list(shape)
        if full[batch_axis] != self.stop - self.start:
            raise ValueError(f"a mask of shape {tuple(shape)} does not hold this piece's "
                             f"{self.stop - self.start} rows in axis {batch_axis}")
        full[batch_axis] = self.total
        u = self.gen.random(tuple(full), dtype=dtype)
        rows = [slice(None)] * len(full)
        rows[batch_axis] = slice(self.start, self.stop)
        return u[tuple(rows)]


def _uniform(rng, shape, dtype, batch_axis: int):
    if isinstance(rng, BatchRows):
        return rng.random(shape, dtype, batch_axis)
    return rng.random(shape, dtype=dtype)


def dropout_forward(x, rate: float, rng=None, batch_axis: int = 0):
    """y = x * m / (1 - rate), m ~ Bernoulli(1 - rate) per element.  d: dx = dy * m / (1 - rate).
    With rate 0 or no generator (evaluation) it is the identity and the mask is None.
    batch_axis: where the samples are in x (1 for attention scores stored keys first)."""
    if rate == 0.0 or rng is None:
        return x, None
    mask = (_uniform(rng, x.shape, x.dtype, batch_axis) >= rate).astype(x.dtype)
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
    mask = (_uniform(rng, shape, x.dtype, 0) >= rate).astype(x.dtype)
    mask *= 1.0 / (1.0 - rate)
    return x * mask, mask


drop_path_backward = dropout_backward
