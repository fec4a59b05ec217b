"""The classifier head: final LayerNorm, pooling, optional tanh pre-logits layer, linear head.

    tokens (B, N, D) -> LayerNorm -> pool: CLS row (B, D) or mean of the patch tokens (B, D)
                     -> [tanh(h @ Wpre + bpre) (B, R)] -> logits = h @ Whead + bhead (B, K)
LayerNorm acts per token, so with CLS pooling only the CLS row is normalized.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import backend
from .activations import tanh_backward, tanh_forward
from .linear import linear_backward, linear_forward
from .norm import layernorm_backward, layernorm_forward


class HeadCache(NamedTuple):
    tokens_shape: tuple        # (B, N, D) of the head's input
    pool: str
    norm: tuple
    pre_logits: tuple | None   # (linear cache, tanh cache) with a pre-logits layer
    head: tuple


def head_forward(t, p: dict, cfg):
    """Tokens (B, N, D) -> logits (B, K); p holds norm.*, [pre_logits.*], head.*; cfg gives pool,
    eps and representation_size.
    d: head and pre-logits pairs in reverse; the mean pool spreads dh / (N - 1) over the patches."""
    pooled = t[:, 0] if cfg.pool == "cls" else t                          # (B, D) or (B, N, D)
    h, c_norm = layernorm_forward(pooled, p["norm.w"], p["norm.b"], cfg.eps)
    if cfg.pool == "mean":
        h = h[:, 1:].mean(1)                                              # (B, D)
    c_pre = None
    if cfg.representation_size:
        h, c_lin = linear_forward(h, p["pre_logits.w"], p["pre_logits.b"])   # (B, R)
        h, c_tanh = tanh_forward(h)
        c_pre = (c_lin, c_tanh)
    logits, c_head = linear_forward(h, p["head.w"], p["head.b"])          # (B, K)
    return logits, HeadCache(tuple(t.shape), cfg.pool, c_norm, c_pre, c_head)


def head_backward(dlogits, cache: HeadCache) -> tuple:
    """Returns dtokens (B, N, D) and a dict of the head's grads by name."""
    (B, N, D), c = cache.tokens_shape, cache
    xp = backend.xp_of(dlogits)
    g = {}
    dh, g["head.w"], g["head.b"] = linear_backward(dlogits, c.head)
    if c.pre_logits is not None:
        dh = tanh_backward(dh, c.pre_logits[1])
        dh, g["pre_logits.w"], g["pre_logits.b"] = linear_backward(dh, c.pre_logits[0])
    dt = xp.zeros((B, N, D), dtype=dlogits.dtype)                         # (B, N, D)
    if c.pool == "cls":
        dt[:, 0], g["norm.w"], g["norm.b"] = layernorm_backward(dh, c.norm)
    else:
        dnorm = xp.zeros_like(dt)
        dnorm[:, 1:] = (dh / (N - 1))[:, None, :]
        dt, g["norm.w"], g["norm.b"] = layernorm_backward(dnorm, c.norm)
    return dt, g
