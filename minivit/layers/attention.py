"""Multi-head self-attention: fused qkv projection, scaled dot-product core, output projection."""
from __future__ import annotations

from .. import backend
from .dropout import dropout_backward, dropout_forward
from .linear import linear_backward, linear_forward
from .reduce import row_max, row_sum


def softmax_forward(s):
    """p = exp(s - max s) / sum exp(s - max s) over the last axis (the shift keeps exp finite).
    d: ds = p * (dp - sum(dp * p))."""
    e = s - row_max(s)
    backend.xp_of(s).exp(e, out=e)
    e /= row_sum(e)
    return e, e


def softmax_backward(dp, p):
    ds = dp - row_sum(dp * p)
    ds *= p
    return ds


def attention_forward(qkv, heads: int, attn_dropout: float = 0.0, rng=None):
    """Scaled dot-product attention of each head, from a fused qkv (B, N, 3D) laid out [q | k | v]
    with heads contiguous inside each: out = softmax(q k^T / sqrt(Dh)) v, heads concatenated.
    d: dv = A^T dout;  dA = dout v^T;  dS = softmax' (dA);  dq = dS k / sqrt(Dh);  dk = dS^T q / sqrt(Dh)."""
    B, N, D3 = qkv.shape
    Dh = D3 // (3 * heads)
    qkv5 = qkv.reshape(B, N, 3, heads, Dh).transpose(2, 0, 3, 1, 4)   # (3, B, H, N, Dh)
    q, k, v = qkv5[0], qkv5[1], qkv5[2]                               # (B, H, N, Dh) each
    scale = Dh ** -0.5
    s = (q * scale) @ k.swapaxes(-1, -2)                  # (B, H, N, N) scores, queries x keys
    a, _ = softmax_forward(s)                             # (B, H, N, N) attention probabilities
    a_drop, mask = dropout_forward(a, attn_dropout, rng)  # (B, H, N, N)
    o = a_drop @ v                                        # (B, H, N, Dh)
    out = o.transpose(0, 2, 1, 3).reshape(B, N, heads * Dh)   # (B, N, D)
    return out, (q, k, v, a, a_drop, mask, scale)


def attention_backward(dout, cache):
    q, k, v, a, a_drop, mask, scale = cache
    xp = backend.xp_of(dout)
    B, H, N, Dh = q.shape
    do = dout.reshape(B, N, H, Dh).transpose(0, 2, 1, 3)  # (B, H, N, Dh)
    dv = a_drop.swapaxes(-1, -2) @ do                     # (B, H, N, Dh)
    da = dropout_backward(do @ v.swapaxes(-1, -2), mask)  # (B, H, N, N)
    ds = softmax_backward(da, a) * scale                  # (B, H, N, N), scale folded in
    dq = ds @ k                                           # (B, H, N, Dh)
    dk = ds.swapaxes(-1, -2) @ q                          # (B, H, N, Dh)
    dqkv = xp.stack([dq, dk, dv])                         # (3, B, H, N, Dh)
    return dqkv.transpose(1, 3, 0, 2, 4).reshape(B, N, 3 * H * Dh)   # (B, N, 3D)


def mhsa_forward(x, qkv_w, qkv_b, proj_w, proj_b, heads: int, attn_dropout: float = 0.0, rng=None):
    """y = concat_h(softmax(q_h k_h^T / sqrt(Dh)) v_h) @ proj_w + proj_b, [q|k|v] = x @ qkv_w + qkv_b.
    d: the three pairs above in reverse."""
    qkv, c_qkv = linear_forward(x, qkv_w, qkv_b)          # (B, N, 3D)
    o, c_att = attention_forward(qkv, heads, attn_dropout, rng)   # (B, N, D)
    y, c_proj = linear_forward(o, proj_w, proj_b)         # (B, N, D)
    return y, (c_qkv, c_att, c_proj)


def mhsa_backward(dy, cache):
    c_qkv, c_att, c_proj = cache
    do, dproj_w, dproj_b = linear_backward(dy, c_proj)
    dqkv = attention_backward(do, c_att)
    dx, dqkv_w, dqkv_b = linear_backward(dqkv, c_qkv)
    return dx, dqkv_w, dqkv_b, dproj_w, dproj_b
