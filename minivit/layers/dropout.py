"""Dropout and stochastic depth (drop path): identity unless a rate > 0 and a mask source are given.

A mask source is a Generator (backend.rng) or a BatchRows, which defines every mask over a whole
batch and hands out the rows of one piece of it, so that a batch split over worker threads or
processes draws exactly the masks one pass over the whole batch would.
"""
from __future__ import annotations

from .. import backend


class BatchRows:
    """Masks for rows [start, stop) of a batch of `total` samples: each draw makes the uniform
    numbers of the whole batch (batch axis first) from a generator seeded with `seed`, then keeps
    this piece's rows. Pieces holding BatchRows with the same seed (and making the same draws in
    the same order) agree with a single pass over the whole batch, whatever the split. The
    generator is made on the first draw, so a model without dropout never builds one."""

    def __init__(self, seed: int, start: int, stop: int, total: int):
        if not 0 <= start <= stop <= total:
            raise ValueError(f"rows [{start}, {stop}) do not lie in a batch of {total}")
        self.seed, self.start, self.stop, self.total = int(seed), int(start), int(stop), int(total)
        self._gen = None

    def rows(self, piece: slice) -> "BatchRows":
        """The mask source of rows `piece` (relative to this one's) of the same batch."""
        start, stop, _ = piece.indices(self.stop - self.start)
        return BatchRows(self.seed, self.start + start, self.start + stop, self.total)

    def random(self, shape, dtype):
        if shape[0] != self.stop - self.start:
            raise ValueError(f"a mask of shape {tuple(shape)} does not hold this piece's "
                             f"{self.stop - self.start} rows in axis 0")
        if self._gen is None:
            self._gen = backend.rng(self.seed)
        u = self._gen.random((self.total,) + tuple(shape[1:]), dtype=dtype)
        return u[self.start:self.stop]


def dropout_mask(shape, dtype, rate: float, rng=None):
    """The scaled keep-mask m / (1 - rate), m ~ Bernoulli(1 - rate) per element, with samples in
    axis 0; None when rate is 0 or there is no mask source (evaluation)."""
    if rate == 0.0 or rng is None:
        return None
    mask = (rng.random(shape, dtype=dtype) >= rate).astype(dtype)
    mask *= 1.0 / (1.0 - rate)
    return mask


def dropout_forward(x, rate: float, rng=None):
    """y = x * m / (1 - rate), m ~ Bernoulli(1 - rate) per element.  d: dx = dy * m / (1 - rate).
    With rate 0 or no mask source (evaluation) it is the identity and the mask is None."""
    mask = dropout_mask(x.shape, x.dtype, rate, rng)
    return (x, None) if mask is None else (x * mask, mask)


def dropout_backward(dy, mask):
    return dy if mask is None else dy * mask


def drop_path_forward(x, rate: float, rng=None):
    """Stochastic depth on a residual branch x (B, ...): y = x * m_b / (1 - rate), one Bernoulli
    m_b per sample.  d: dx = dy * m_b / (1 - rate)."""
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)           # (B, 1, 1)
    mask = dropout_mask(shape, x.dtype, rate, rng)
    return (x, None) if mask is None else (x * mask, mask)


drop_path_backward = dropout_backward
