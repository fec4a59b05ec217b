"""The classifier head: final LayerNorm, pooling, optional tanh pre-logits layer, linear head.

    tokens (B, N, D) -> LayerNorm -> pool: CLS row (B, D) or mean of the patch tokens (B, D)
                     -> [tanh(h @ Wpre + bpre) (B, R)] -> logits = h @ Whead + bhead (B, K)
LayerNorm acts per token, so with CLS pooling only the CLS row is normalized. With fc_norm
(timm's average pooling) the mean comes first and the LayerNorm normalizes it. A distilled
model (DeiT) normalizes the CLS and distillation rows, gives each its head, and returns the
mean of the two logits. With num_classes = 0 there is no head: the pooled features (B, R|D)
are the output (the mean of the two rows for a distilled model).
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
    head: tuple | None         # the head's linear cache; None without a head
    head_dist: tuple | None    # the distillation head's linear cache (distilled models)
    prefix: int                # T prefix tokens (left out of the mean), or rows pooled (cls)
    fc_norm: bool


def head_forward(t, p: dict, cfg):
    """Tokens (B, N, D) -> logits (B, K) (features (B, R|D) when cfg.num_classes = 0); p holds
    norm.*, [pre_logits.*], [head.*], [head_dist.*]; cfg gives pool, fc_norm, eps,
    representation_size, distilled and the prefix token count.
    d: head and pre-logits pairs in reverse; the mean pool spreads dh / P over the patches;
    a distilled model's two heads each get dlogits / 2."""
    T, rows = cfg.num_prefix_tokens, 1 + int(cfg.distilled)
    if cfg.pool == "cls":                                 # (B, D), or (B, 2, D) distilled
        h, c_norm = layernorm_forward(t[:, 0] if rows == 1 else t[:, :2], p["norm.w"],
                                      p["norm.b"], cfg.eps)
    elif cfg.fc_norm:                                     # mean of the patch tokens, then norm
        h, c_norm = layernorm_forward(t[:, T:].mean(1), p["norm.w"], p["norm.b"], cfg.eps)
    else:                                                 # norm every token, then the mean
        h, c_norm = layernorm_forward(t, p["norm.w"], p["norm.b"], cfg.eps)
        h = h[:, T:].mean(1)                              # (B, D)
    c_pre = None
    if cfg.representation_size:
        h, c_lin = linear_forward(h, p["pre_logits.w"], p["pre_logits.b"])   # (B, R)
        h, c_tanh = tanh_forward(h)
        c_pre = (c_lin, c_tanh)
    c_head = c_dist = None
    if rows == 2:                                         # two heads, or the mean of two rows
        if cfg.num_classes:
            y, c_head = linear_forward(h[:, 0], p["head.w"], p["head.b"])            # (B, K)
            yd, c_dist = linear_forward(h[:, 1], p["head_dist.w"], p["head_dist.b"])  # (B, K)
            h = y + yd
        else:
            h = h[:, 0] + h[:, 1]                         # (B, D)
        h *= 0.5
    elif cfg.num_classes:
        h, c_head = linear_forward(h, p["head.w"], p["head.b"])                      # (B, K)
    pool = cfg.pool if rows == 1 else "cls2"
    return h, HeadCache(tuple(t.shape), pool, c_norm, c_pre, c_head, c_dist,
                        T if cfg.pool == "mean" else rows, cfg.fc_norm)


def head_backward(dlogits, cache: HeadCache) -> tuple:
    """Returns dtokens (B, N, D) and a dict of the head's grads by name."""
    (B, N, D), c = cache.tokens_shape, cache
    xp = backend.xp_of(dlogits)
    g = {}
    dh = dlogits
    if c.pool == "cls2":                                  # distilled: each row gets dlogits / 2
        dh = dlogits * 0.5
        if c.head is not None:
            d0, g["head.w"], g["head.b"] = linear_backward(dh, c.head)
            d1, g["head_dist.w"], g["head_dist.b"] = linear_backward(dh, c.head_dist)
        else:
            d0 = d1 = dh
        dh = xp.stack([d0, d1], axis=1)                   # (B, 2, D)
    elif c.head is not None:
        dh, g["head.w"], g["head.b"] = linear_backward(dlogits, c.head)
    if c.pre_logits is not None:
        dh = tanh_backward(dh, c.pre_logits[1])
        dh, g["pre_logits.w"], g["pre_logits.b"] = linear_backward(dh, c.pre_logits[0])
    dt = xp.zeros((B, N, D), dtype=dlogits.dtype)                         # (B, N, D)
    if c.pool != "mean":                                  # the first 1 or 2 rows
        dnorm, g["norm.w"], g["norm.b"] = layernorm_backward(dh, c.norm)   # (B, D) | (B, 2, D)
        dt[:, :c.prefix] = dnorm if c.prefix == 2 else dnorm[:, None]
    elif c.fc_norm:
        dpool, g["norm.w"], g["norm.b"] = layernorm_backward(dh, c.norm)    # (B, D)
        dt[:, c.prefix:] = (dpool / (N - c.prefix))[:, None, :]
    else:
        dnorm = xp.zeros_like(dt)
        dnorm[:, c.prefix:] = (dh / (N - c.prefix))[:, None, :]
        dt, g["norm.w"], g["norm.b"] = layernorm_backward(dnorm, c.norm)
    return dt, g
