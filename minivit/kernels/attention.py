"""Attention with the scores stored keys first, for NumPy: the same function as
layers/attention.py's attention pair (tests/kernels prove it equal), in another layout.

The attention scores are stored keys first, (N, B, H, Q): s[b, h, i, j] lives at st[j, b, h, i].
Softmax then normalizes down the first axis, where NumPy's max and sum run as a few vectorized
operations across rows B*H*Q long instead of one short reduction per row. The batched matmuls
read and write that layout through strided views, which NumPy hands to BLAS as they are.

On CuPy that layout would make cuBLAS copy strided operands, so the GPU keeps the reference's
layout (queries first, softmax over the contiguous last axis) with the softmax's elementwise
chains fused (attention_forward_gpu).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import backend
from ..layers.attention import AttentionCache as ReferenceCache, split_heads
from ..layers.dropout import dropout_backward, dropout_mask
from . import fused
from .reduce import col_sum


class AttentionCache(NamedTuple):
    """What attention_backward reads (and what attention maps show: probs)."""
    q: object           # (B, H, Q, Dh) view into qkv
    k: object           # (B, H, N, Dh)
    v: object           # (B, H, N, Dh)
    probs: object       # (N, B, H, Q) softmax probabilities, keys first
    probs_drop: object  # probs after attention dropout (probs itself without dropout)
    mask: object        # the dropout mask, keys first like probs, or None
    scale: float        # 1 / sqrt(Dh)
    rows: slice         # the query rows computed (slice(0, N): all)


    def maps(self):
        """The attention probabilities (B, H, Q, N), one row per query (a view)."""
        return self.probs.transpose(1, 2, 3, 0)


class MHSACache(NamedTuple):
    qkv: tuple          # the qkv linear's cache
    core: AttentionCache
    proj: tuple         # the output linear's cache


def softmax_forward(s, overwrite: bool = False):
    """p = exp(s - max s) / sum exp(s - max s) over the FIRST axis of s (N, ...): each column
    p[:, j...] is one distribution (the shift by the max keeps exp finite).
    overwrite=True: s is scratch (attention's fresh scores) and p is written over it on NumPy,
    saving a (N, R) array and a pass over memory; the same bits.
    d: ds = p * (dp - sum(dp * p)), the sum again over the first axis."""
    e = s.reshape(s.shape[0], -1)                         # (N, R) view (a copy if s is strided)
    if overwrite:
        np.subtract(e, e.max(0), out=e)                   # (N, R), over the scores
    else:
        e = e - e.max(0)                                  # (N, R)
    np.exp(e, out=e)
    e /= col_sum(e)
    e = e.reshape(s.shape)
    return e, e


def softmax_backward(dp, p):
    N = p.shape[0]
    dp2, p2 = dp.reshape(N, -1), p.reshape(N, -1)         # (N, R)
    ds = dp2 - col_sum(dp2 * p2)                          # (N, R)
    ds *= p2
    return ds.reshape(p.shape)


def attention_forward(qkv, heads: int, attn_dropout: float = 0.0, rng=None, queries=None):
    """Scaled dot-product attention of each head, from a fused qkv (B, N, 3D) laid out [q | k | v]
    with heads contiguous inside each: out = softmax(q k^T / sqrt(Dh)) v, heads concatenated.
    queries=Q keeps only the first Q query rows, queries=slice(a, b) rows a..b-1 (all keys
    either way): out is (B, Q, D), exactly those rows of the whole output.
    d: dv = A^T dout;  dA = dout v^T;  dS = softmax'(dA);  dq = dS k / sqrt(Dh);  dk = dS^T q / sqrt(Dh)."""
    xp = backend.xp_of(qkv)
    B, N, D3 = qkv.shape
    Dh = D3 // (3 * heads)
    rows = queries if isinstance(queries, slice) else slice(0, queries)
    rows = slice(*rows.indices(N))
    qkv5 = qkv.reshape(B, N, 3, heads, Dh).transpose(2, 0, 3, 1, 4)   # (3, B, H, N, Dh)
    q, k, v = qkv5[0, :, :, rows], qkv5[1], qkv5[2]                  # (B, H, Q|N, Dh)
    Q = q.shape[2]
    scale = Dh ** -0.5
    st = xp.empty((N, B, heads, Q), dtype=qkv.dtype)      # scores, keys first (module docstring)
    xp.matmul(k, (q * scale).swapaxes(-1, -2), out=st.transpose(1, 2, 0, 3))   # s^T = k q^T
    a, _ = softmax_forward(st, overwrite=True)            # (N, B, H, Q) probabilities, keys first
    mask = dropout_mask((B, heads, N, N), a.dtype, attn_dropout, rng)  # the reference's masks
    if mask is not None:                                  # (B, H, N, N) -> (N, B, H, Q)
        mask = mask.transpose(3, 0, 1, 2)[..., rows]
    a_drop = a if mask is None else a * mask              # (N, B, H, Q)
    out = xp.empty((B, Q, heads, Dh), dtype=qkv.dtype)   # (B, Q, H, Dh): heads side by side
    xp.matmul(a_drop.transpose(1, 2, 3, 0), v, out=out.transpose(0, 2, 1, 3))  # A v, (B, H, Q, Dh)
    return out.reshape(B, Q, heads * Dh), AttentionCache(q, k, v, a, a_drop, mask, scale, rows)


def attention_backward(dout, cache):
    q, k, v, a, a_drop, mask, scale, rows = cache
    xp = backend.xp_of(dout)
    B, H, Q, Dh = q.shape
    N = k.shape[2]
    do = dout.reshape(B, Q, H, Dh).transpose(0, 2, 1, 3)  # (B, H, Q, Dh)
    dqkv = xp.zeros((B, N, 3, H, Dh), dtype=dout.dtype) if Q < N else \
        xp.empty((B, N, 3, H, Dh), dtype=dout.dtype)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)            # (B, H, N, Dh) views into dqkv
    dat = xp.empty_like(a)                                # dA, keys first like a: (N, B, H, Q)
    xp.matmul(v, do.swapaxes(-1, -2), out=dat.transpose(1, 2, 0, 3))   # dA^T = v dout^T
    dst = softmax_backward(dropout_backward(dat, mask), a)
    dst *= scale                                          # (N, B, H, Q), scale folded in
    xp.matmul(dst.transpose(1, 2, 3, 0), k, out=dq[:, :, rows])         # dS k
    xp.matmul(dst.transpose(1, 2, 0, 3), q, out=dk)                     # dS^T q
    xp.matmul(a_drop.transpose(1, 2, 0, 3), do, out=dv)                 # A^T dout
    return dqkv.reshape(B, N, 3 * H * Dh)                 # (B, N, 3D)


def attention_probs(cache: AttentionCache):
    """The attention probabilities (B, H, Q, N) of a forward's cache (stored keys first)."""
    return cache.maps()


def attention_forward_gpu(qkv, heads: int, attn_dropout: float = 0.0, rng=None):
    """layers.attention.attention_forward with the softmax's exp(s - max) and its backward's
    p (dp - sum(dp p)) each one fused kernel (CuPy only); the same cache."""
    q, k, v = split_heads(qkv, heads)                     # (B, H, N, Dh) each
    B, H, N, Dh = q.shape
    scale = Dh ** -0.5
    s = q @ k.swapaxes(-1, -2)                            # (B, H, N, N)
    s *= scale
    a = fused.softmax_exp(s, s.max(-1, keepdims=True))    # (B, H, N, N)
    a /= a.sum(-1, keepdims=True)
    mask = dropout_mask(a.shape, a.dtype, attn_dropout, rng)
    o = (a if mask is None else a * mask) @ v             # (B, H, N, Dh)
    out = o.transpose(0, 2, 1, 3).reshape(B, N, H * Dh)   # (B, N, D)
    return out, ReferenceCache(q, k, v, a, mask, scale)


def attention_backward_gpu(dout, cache):
    q, k, v, a, mask, scale = cache
    xp = backend.xp_of(dout)
    B, H, N, Dh = q.shape
    do = dout.reshape(B, N, H, Dh).transpose(0, 2, 1, 3)  # (B, H, N, Dh)
    a_drop = a if mask is None else a * mask
    dv = a_drop.swapaxes(-1, -2) @ do                     # (B, H, N, Dh)
    da = dropout_backward(do @ v.swapaxes(-1, -2), mask)  # (B, H, N, N)
    ds = fused.softmax_dx(da, a, (da * a).sum(-1, keepdims=True))
    ds *= scale
    dqkv = xp.stack([ds @ k, ds.swapaxes(-1, -2) @ q, dv])   # (3, B, H, N, Dh)
    return dqkv.transpose(1, 3, 0, 2, 4).reshape(B, N, 3 * H * Dh)   # (B, N, 3D)
