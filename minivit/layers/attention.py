"""Multi-head self-attention: fused qkv projection, scaled dot-product core, output projection.

The attention scores are stored keys first, (N, B, H, Q): s[b, h, i, j] lives at st[j, b, h, i].
Softmax then normalizes down the first axis, where NumPy's max and sum run as a few vectorized
operations across rows B*H*Q long instead of one short reduction per row (about 5x faster for
those two on the MNIST shapes; the whole softmax about 2.5x). The batched matmuls read and write
that layout through strided views: NumPy hands the strides to BLAS, CuPy copies where it must.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import backend
from . import fused
from .dropout import dropout_backward, dropout_forward
from .linear import linear_backward, linear_forward
from .reduce import col_sum


class AttentionCache(NamedTuple):
    """What attention_backward reads (and what attention maps show: probs)."""
    q: object           # (B, H, Q, Dh) view into qkv
    k: object           # (B, H, N, Dh)
    v: object           # (B, H, N, Dh)
    probs: object       # (N, B, H, Q) softmax probabilities, keys first
    probs_drop: object  # probs after attention dropout (probs itself without dropout)
    mask: object        # the dropout mask, or None
    scale: float        # 1 / sqrt(Dh)
    rows: slice         # the query rows computed (slice(0, N): all)


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
    if backend.xp_of(s) is not np:                        # GPU: exp(s - max) in one fused pass
        e = fused.softmax_exp(s, s.max(0, keepdims=True))
        e /= e.sum(0, keepdims=True)
        return e, e
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
    if backend.xp_of(p) is not np:
        return fused.softmax_dx(dp, p, (dp * p).sum(0, keepdims=True))
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
    a_drop, mask = dropout_forward(a, attn_dropout, rng, batch_axis=1)   # (N, B, H, Q)
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


def mhsa_forward(x, qkv_w, qkv_b, proj_w, proj_b, heads: int, attn_dropout: float = 0.0, rng=None,
                 queries=None):
    """y = concat_h(softmax(q_h k_h^T / sqrt(Dh)) v_h) @ proj_w + proj_b, [q|k|v] = x @ qkv_w + qkv_b.
    queries=Q: outputs for the first Q tokens only, (B, Q, D). d: the three pairs in reverse."""
    qkv, c_qkv = linear_forward(x, qkv_w, qkv_b)          # (B, N, 3D)
    o, c_att = attention_forward(qkv, heads, attn_dropout, rng, queries)   # (B, N|Q, D)
    y, c_proj = linear_forward(o, proj_w, proj_b)         # (B, N|Q, D)
    return y, MHSACache(c_qkv, c_att, c_proj)


def mhsa_backward(dy, cache):
    c_qkv, c_att, c_proj = cache
    do, dproj_w, dproj_b = linear_backward(dy, c_proj)
    dqkv = attention_backward(do, c_att)
    dx, dqkv_w, dqkv_b = linear_backward(dqkv, c_qkv)
    return dx, dqkv_w, dqkv_b, dproj_w, dproj_b


def attention_probs(cache: AttentionCache):
    """The attention probabilities (B, H, Q, N) of a forward's cache (stored keys first)."""
    return cache.probs.transpose(1, 2, 3, 0)
