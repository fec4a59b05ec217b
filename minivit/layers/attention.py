"""Multi-head self-attention: fused qkv projection, scaled dot-product core, output projection."""
from __future__ import annotations

from typing import NamedTuple

from .. import backend
from .dropout import dropout_backward, dropout_mask
from .linear import linear_backward, linear_forward


class AttentionCache(NamedTuple):
    """What attention_backward reads (and what attention maps show: probs)."""
    q: object           # (B, H, N, Dh)
    k: object           # (B, H, N, Dh)
    v: object           # (B, H, N, Dh)
    probs: object       # (B, H, N, N) softmax probabilities, one row per query
    mask: object        # the attention-dropout mask (B, H, N, N), or None
    scale: float        # 1 / sqrt(Dh)

    def maps(self):
        """The attention probabilities (B, H, N, N), one row per query."""
        return self.probs


class MHSACache(NamedTuple):
    qkv: tuple          # the qkv linear's cache
    core: AttentionCache
    proj: tuple         # the output linear's cache


def softmax_forward(s):
    """p = exp(s - max s) / sum exp(s - max s) over the last axis (the shift keeps exp finite
    and changes nothing else).  d: ds = p * (dp - sum(dp * p)), the sum over the last axis."""
    e = backend.xp_of(s).exp(s - s.max(-1, keepdims=True))   # (..., N)
    p = e / e.sum(-1, keepdims=True)                      # (..., N)
    return p, p


def softmax_backward(dp, p):
    return p * (dp - (dp * p).sum(-1, keepdims=True))     # (..., N)


def split_heads(qkv, heads: int) -> tuple:
    """q, k, v (B, H, N, Dh) each, views of a fused qkv (B, N, 3D) laid out [q | k | v] with the
    heads contiguous inside each third."""
    B, N, D3 = qkv.shape
    return tuple(qkv.reshape(B, N, 3, heads, D3 // (3 * heads)).transpose(2, 0, 3, 1, 4))


def attention_forward(qkv, heads: int, attn_dropout: float = 0.0, rng=None):
    """Scaled dot-product attention of each head, heads concatenated:
        S = q k^T / sqrt(Dh),  A = softmax(S) over the keys,  out = drop(A) v.
    d: dv = drop(A)^T dout;  dA = drop'(dout v^T);  dS = softmax'(dA);
       dq = dS k / sqrt(Dh);  dk = dS^T q / sqrt(Dh)."""
    q, k, v = split_heads(qkv, heads)                     # (B, H, N, Dh) each
    B, H, N, Dh = q.shape
    scale = Dh ** -0.5
    s = (q @ k.swapaxes(-1, -2)) * scale                  # (B, H, N, N) scores
    a, _ = softmax_forward(s)                             # (B, H, N, N) probabilities
    mask = dropout_mask(a.shape, a.dtype, attn_dropout, rng)
    o = (a if mask is None else a * mask) @ v             # (B, H, N, Dh)
    out = o.transpose(0, 2, 1, 3).reshape(B, N, H * Dh)   # (B, N, D) heads side by side
    return out, AttentionCache(q, k, v, a, mask, scale)


def attention_backward(dout, cache: AttentionCache):
    q, k, v, a, mask, scale = cache
    xp = backend.xp_of(dout)
    B, H, N, Dh = q.shape
    do = dout.reshape(B, N, H, Dh).transpose(0, 2, 1, 3)  # (B, H, N, Dh)
    a_drop = a if mask is None else a * mask              # (B, H, N, N)
    dv = a_drop.swapaxes(-1, -2) @ do                     # (B, H, N, Dh)
    da = dropout_backward(do @ v.swapaxes(-1, -2), mask)  # (B, H, N, N)
    ds = softmax_backward(da, a) * scale                  # (B, H, N, N), scale folded in
    dq = ds @ k                                           # (B, H, N, Dh)
    dk = ds.swapaxes(-1, -2) @ q                          # (B, H, N, Dh)
    dqkv = xp.stack([dq, dk, dv])                         # (3, B, H, N, Dh)
    return dqkv.transpose(1, 3, 0, 2, 4).reshape(B, N, 3 * H * Dh)   # (B, N, 3D)


def attention_probs(cache: AttentionCache):
    """The attention probabilities (B, H, N, N) kept by a forward."""
    return cache.maps()


def mhsa_forward(x, qkv_w, qkv_b, proj_w, proj_b, heads: int, attn_dropout: float = 0.0, rng=None):
    """y = concat_h(softmax(q_h k_h^T / sqrt(Dh)) v_h) @ proj_w + proj_b, [q|k|v] = x @ qkv_w + qkv_b.
    d: the three pairs in reverse."""
    qkv, c_qkv = linear_forward(x, qkv_w, qkv_b)          # (B, N, 3D)
    o, c_att = attention_forward(qkv, heads, attn_dropout, rng)   # (B, N, D)
    y, c_proj = linear_forward(o, proj_w, proj_b)         # (B, N, D)
    return y, MHSACache(c_qkv, c_att, c_proj)


def mhsa_backward(dy, cache: MHSACache):
    c_qkv, c_att, c_proj = cache
    do, dproj_w, dproj_b = linear_backward(dy, c_proj)
    dqkv = attention_backward(do, c_att)
    dx, dqkv_w, dqkv_b = linear_backward(dqkv, c_qkv)
    return dx, dqkv_w, dqkv_b, dproj_w, dproj_b
