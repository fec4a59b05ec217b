"""Multi-head self-attention: fused qkv projection, scaled dot-product core, output projection."""
from __future__ import annotations

import numpy as np

from .. import backend
from . import fused
from .dropout import dropout_backward, dropout_forward
from .linear import linear_backward, linear_forward
from .reduce import row_max, row_sum


def softmax_forward(s):
    """p = exp(s - max s) / sum exp(s - max s) over the last axis (the shift keeps exp finite).
    d: ds = p * (dp - sum(dp * p))."""
    if backend.xp_of(s) is not np:                        # GPU: exp(s - max) in one fused pass
        e = fused.softmax_exp(s, s.max(-1, keepdims=True))
    else:
        e = s - row_max(s)
        np.exp(e, out=e)
    e /= row_sum(e)
    return e, e


def softmax_backward(dp, p):
    if backend.xp_of(p) is not np:
        return fused.softmax_dx(dp, p, (dp * p).sum(-1, keepdims=True))
    ds = dp - row_sum(dp * p)
    ds *= p
    return ds


def attention_forward(qkv, heads: int, attn_dropout: float = 0.0, rng=None, queries=None):
    """Scaled dot-product attention of each head, from a fused qkv (B, N, 3D) laid out [q | k | v]
    with heads contiguous inside each: out = softmax(q k^T / sqrt(Dh)) v, heads concatenated.
    queries=Q keeps only the first Q query rows (all keys): out is (B, Q, D).
    d: dv = A^T dout;  dA = dout v^T;  dS = softmax'(dA);  dq = dS k / sqrt(Dh);  dk = dS^T q / sqrt(Dh)."""
    B, N, D3 = qkv.shape
    Dh = D3 // (3 * heads)
    qkv5 = qkv.reshape(B, N, 3, heads, Dh).transpose(2, 0, 3, 1, 4)   # (3, B, H, N, Dh)
    q, k, v = qkv5[0, :, :, :queries], qkv5[1], qkv5[2]              # (B, H, Q|N, Dh)
    scale = Dh ** -0.5
    s = (q * scale) @ k.swapaxes(-1, -2)                  # (B, H, Q, N) scores, queries x keys
    a, _ = softmax_forward(s)                             # (B, H, Q, N) attention probabilities
    a_drop, mask = dropout_forward(a, attn_dropout, rng)  # (B, H, Q, N)
    o = a_drop @ v                                        # (B, H, Q, Dh)
    out = o.transpose(0, 2, 1, 3).reshape(B, q.shape[2], heads * Dh)   # (B, Q, D)
    return out, (q, k, v, a, a_drop, mask, scale)


def attention_backward(dout, cache):
    q, k, v, a, a_drop, mask, scale = cache
    xp = backend.xp_of(dout)
    B, H, Q, Dh = q.shape
    N = k.shape[2]
    do = dout.reshape(B, Q, H, Dh).transpose(0, 2, 1, 3)  # (B, H, Q, Dh)
    dqkv = xp.zeros((B, N, 3, H, Dh), dtype=dout.dtype) if Q < N else \
        xp.empty((B, N, 3, H, Dh), dtype=dout.dtype)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)            # (B, H, N, Dh) views into dqkv
    da = dropout_backward(do @ v.swapaxes(-1, -2), mask)  # (B, H, Q, N)
    ds = softmax_backward(da, a)
    ds *= scale                                           # (B, H, Q, N), scale folded in
    dq[:, :, :Q] = ds @ k                                 # (B, H, Q, Dh)
    dk[...] = ds.swapaxes(-1, -2) @ q                     # (B, H, N, Dh)
    dv[...] = a_drop.swapaxes(-1, -2) @ do                # (B, H, N, Dh)
    return dqkv.reshape(B, N, 3 * H * Dh)                 # (B, N, 3D)


def mhsa_forward(x, qkv_w, qkv_b, proj_w, proj_b, heads: int, attn_dropout: float = 0.0, rng=None,
                 queries=None):
    """y = concat_h(softmax(q_h k_h^T / sqrt(Dh)) v_h) @ proj_w + proj_b, [q|k|v] = x @ qkv_w + qkv_b.
    queries=Q: outputs for the first Q tokens only, (B, Q, D). d: the three pairs in reverse."""
    qkv, c_qkv = linear_forward(x, qkv_w, qkv_b)          # (B, N, 3D)
    o, c_att = attention_forward(qkv, heads, attn_dropout, rng, queries)   # (B, N|Q, D)
    y, c_proj = linear_forward(o, proj_w, proj_b)         # (B, N|Q, D)
    return y, (c_qkv, c_att, c_proj)


def mhsa_backward(dy, cache):
    c_qkv, c_att, c_proj = cache
    do, dproj_w, dproj_b = linear_backward(dy, c_proj)
    dqkv = attention_backward(do, c_att)
    dx, dqkv_w, dqkv_b = linear_backward(dqkv, c_qkv)
    return dx, dqkv_w, dqkv_b, dproj_w, dproj_b
