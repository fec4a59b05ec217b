"""The encoder block, fast: the same function and gradients as layers/block.py's block pair
(tests/kernels prove them equal), assembled from the fast kernels of this package:

- each LayerNorm's affine goes onto its rows or into the next linear layer's weights, whichever
  is less work (norm.py);
- attention keeps its scores keys first on NumPy, queries first with fused softmax on CuPy
  (attention.py), or with streamed=True never holds them: blocks of queries and keys, with
  a shift per row (streamed.py, where kernels.plan picks it); the GELU runs in cache-sized
  chunks through exp (gelu.py);
- the cache keeps neither the qkv and fc1 inputs nor their (folded) weights, nor fc2's input,
  the largest activation of a block: backward remakes each from what it keeps (normalize's
  output, the GELU's cache) with the forward's own operations, so the same bits;
- queries=Q computes only the first Q rows of the output (all that CLS pooling reads of the
  last block), each still attending to every token; block_qkv_forward and block_rows_forward,
  the block's two halves, let split.py run a small batch's tokens on worker threads.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import backend
from ..layers.attention import AttentionCache as ReferenceAttentionCache, MHSACache
from ..layers.dropout import (drop_path_backward, drop_path_forward, dropout_backward,
                              dropout_forward, dropout_mask)
from ..layers.scale import layer_scale_backward, layer_scale_forward
from . import streamed as streamed_attention
from .attention import (AttentionCache, attention_backward, attention_backward_gpu,
                        attention_forward, attention_forward_gpu)
from .gelu import GELU, gelu_in_place, gelu_output, gelu_remake
from .linear import linear_backward, linear_forward
from .norm import (AffineCache, affine_into_linear_backward, affine_into_linear_forward,
                   affine_linear_inputs, normalize_backward, normalize_forward)


class MLPCache(NamedTuple):
    fc1: tuple
    act: tuple                 # the GELU's (input, s): its output is x s (s None: remade)
    drop_hidden: object        # dropout mask after the GELU, or None
    fc2: tuple                 # fc2's cache without its input (None): backward remakes it
    drop_out: object           # dropout mask after fc2, or None
    gelu: str


class BlockCache(NamedTuple):
    """What block_backward reads, by name (attention maps read .attn.core.probs)."""
    norm1: tuple
    affine1: AffineCache       # how norm1's affine met the qkv linear (norm.py)
    attn: MHSACache            # (its qkv cache keeps neither input nor weight: below)
    drop_attn: object          # dropout mask on the attention branch, or None
    scale_attn: tuple | None   # LayerScale of the attention branch, or None
    path_attn: object          # drop-path mask on the attention branch, or None
    norm2: tuple
    affine2: AffineCache       # how norm2's affine met the fc1 linear
    mlp: MLPCache              # (its fc1 cache, like attn's qkv cache, keeps no input or weight)
    scale_mlp: tuple | None    # LayerScale of the MLP branch, or None
    path_mlp: object           # drop-path mask on the MLP branch, or None
    queries: int | None        # only the first `queries` rows were computed, or None: all


def mlp_forward(x, w1, b1, w2, b2, gelu: str = "tanh", dropout: float = 0.0, rng=None,
                rows: tuple | None = None, keep: bool = True):
    """y = drop(drop(gelu(x @ w1 + b1)) @ w2 + b2), w1 (D, F), w2 (F, D).
    d: the linear, dropout and GELU pairs in reverse. The cache does not keep fc2's input
    drop(gelu(h)) (B, N, F), the largest activation of a block: backward remakes it from the
    GELU's cache with the forward's own multiplications (the same bits, one cheap pass).
    rows=(rows, N): x holds those rows of N tokens; the dropout masks are those rows of the
    masks all N would draw (_dropout_rows). keep=False (inference: no masks): no cache, and
    the GELU overwrites its input, so one (B, N, F) activation is held instead of three."""
    if not keep:
        if rng is not None:
            raise ValueError("keep=False is for inference: it takes no dropout masks")
        h, _ = linear_forward(x, w1, b1)                  # (B, N, F)
        gelu_in_place(h, gelu)                            # the same bits as act_forward's y
        y, _ = linear_forward(h, w2, b2)                  # (B, N, D)
        return y, None
    act_forward, _ = GELU[gelu]
    h, c_fc1 = linear_forward(x, w1, b1)                  # (B, N, F)
    h, c_act = act_forward(h)                             # (B, N, F)
    h, m_h = _dropout_rows(h, dropout, rng, rows)         # (B, N, F)
    y, (_, _, h_shape) = linear_forward(h, w2, b2)        # (B, N, D)
    y, m_y = _dropout_rows(y, dropout, rng, rows)         # (B, N, D)
    return y, MLPCache(c_fc1, c_act, m_h, (None, w2, h_shape), m_y, gelu)


def _dropout_rows(x, rate: float, rng, rows: tuple | None):
    """dropout_forward of x (B, R, ...), rows `rows[0]` (a slice) of an activation of rows[1]
    tokens: the mask is those rows of the mask the whole (B, N, ...) activation draws, so the
    masks are the reference block's whatever rows are computed."""
    if rows is None:
        return dropout_forward(x, rate, rng)
    part, N = rows
    mask = dropout_mask((x.shape[0], N) + x.shape[2:], x.dtype, rate, rng)   # (B, N, ...)
    if mask is None:
        return x, None
    mask = mask[:, part]                                  # (B, R, ...)
    return x * mask, mask


def mlp_backward(dy, cache: MLPCache):
    _, act_backward = GELU[cache.gelu]
    c_act = gelu_remake(cache.act)                        # (x, s), s remade if left out
    h = gelu_output(c_act)                                # fc2's input again: (B, N, F)
    if cache.drop_hidden is not None:
        h = h * cache.drop_hidden                         # as dropout_forward computed it
    _, w2, h_shape = cache.fc2
    c_fc2 = (h.reshape(-1, h_shape[-1]), w2, h_shape)
    dh, dw2, db2 = linear_backward(dropout_backward(dy, cache.drop_out), c_fc2)
    dh = act_backward(dropout_backward(dh, cache.drop_hidden), c_act)
    dx, dw1, db1 = linear_backward(dh, cache.fc1)
    return dx, dw1, db1, dw2, db2


def block_forward(x, p: dict, cfg, *, drop_path: float = 0.0, rng=None,
                  queries: int | None = None, streamed: bool = False, keep: bool = True):
    """layers.block.block_forward (same arguments, same function), fast. queries=Q returns only
    the first Q rows (B, Q, D), exactly those of the whole output. streamed=True: the streamed
    attention kernel (no attention dropout: kernels.plan's rule). keep=False (inference, no
    masks): the same output and no cache; each activation is let go once it is read.
    d: block_backward, the reference's steps with the remade inputs."""
    rows = None if queries is None else slice(0, queries)
    return block_rows_forward(x, *block_qkv_forward(x, p, cfg, queries=queries),  # (B, N, 3D)
                              p, cfg, rows=rows, drop_path=drop_path, rng=rng, streamed=streamed,
                              keep=keep)


def block_qkv_forward(x, p: dict, cfg, queries: int | None = None) -> tuple:
    """The block's first half, row by row: qkv = affine(normalize(x)) @ qkv.w + qkv.b (B, N, 3D),
    and its cache (norm1's, the affine's, the qkv linear's).
    queries=Q: only the first Q rows need their q (the rows block_rows_forward is asked for):
    the q of the other rows is neither computed nor set, k and v are, for every row (the last
    block under CLS pooling: a third of its qkv product saved). What is computed equals the
    whole product to rounding: BLAS may sum a product of another shape in another order."""
    h, c_n1 = normalize_forward(x, cfg.eps)                                    # (B, N, D)
    h, qkv_w, qkv_b, c_a1 = affine_into_linear_forward(h, p["norm1.w"], p["norm1.b"],
                                                       p["attn.qkv.w"], p["attn.qkv.b"])
    if queries is None or queries >= h.shape[1]:
        qkv, c_lin = linear_forward(h, qkv_w, qkv_b)                           # (B, N, 3D)
    else:
        qkv, c_lin = _linear_some_q(h, qkv_w, qkv_b, queries)                 # (B, N, 3D)
    return qkv, (c_n1, c_a1, _linear_cache(c_lin))                            # remade in backward


def _linear_some_q(h, w, b, queries: int) -> tuple:
    """linear_forward(h, w, b) for the qkv layer (w (D, 3D) laid out [q | k | v]) with q only
    for the first `queries` rows of h (B, N, D): k and v of every row, each product written
    straight into its place in qkv (B, N, 3D); q of rows >= queries left unset."""
    xp = backend.xp_of(h)
    B, N, D = h.shape
    qkv = xp.empty((B, N, w.shape[1]), dtype=h.dtype)
    kv = qkv.reshape(B * N, -1)[:, D:]                                         # (B N, 2D) view
    xp.matmul(h.reshape(B * N, D), w[:, D:], out=kv)
    kv += b[D:]
    q = qkv[:, :queries, :D]                                                   # (B, Q, D) view
    xp.matmul(h[:, :queries], w[:, :D], out=q)
    q += b[:D]
    return qkv, (h.reshape(B * N, D), w, h.shape)


def block_rows_forward(x, qkv, c_qkv: tuple, p: dict, cfg, *, rows: slice | None = None,
                       drop_path: float = 0.0, rng=None, streamed: bool = False,
                       keep: bool = True) -> tuple:
    """The block's second half for the token rows `rows` (None: all) of x (B, N, D), given every
    token's qkv (B, N, 3D): their attention (all keys), projection, residual and MLP branch.
    Returns those rows of the block's output (B, R, D) and the BlockCache (backward supports
    rows=None or slice(0, Q): what block_forward passes). streamed=True: streamed attention.
    keep=False (inference): the cache is None, and qkv, the attention's output and the MLP's
    hidden activation are let go as soon as they are read (the caller holds no other
    reference to qkv when it wants it freed: block_forward passes it straight in)."""
    if not keep and rng is not None:
        raise ValueError("keep=False is for inference: it takes no dropout masks")
    scaled = cfg.layer_scale is not None
    c_n1, c_a1, c_lin = c_qkv
    if streamed:                                          # no (B, H, N, N) scores
        o, c_core = streamed_attention.attention_forward(qkv, cfg.heads, cfg.attn_dropout, rng,
                                                         rows)                 # (B, R, D)
    elif backend.xp_of(qkv) is np:
        o, c_core = attention_forward(qkv, cfg.heads, cfg.attn_dropout, rng, rows)   # (B, R, D)
    elif rows is None:                                    # the GPU computes every row
        o, c_core = attention_forward_gpu(qkv, cfg.heads, cfg.attn_dropout, rng)     # (B, N, D)
    else:
        raise ValueError("the GPU block computes every row: call it without queries/rows")
    if not keep:                                          # keys and values read: let them go
        qkv = c_qkv = c_n1 = c_a1 = c_lin = c_core = None
    a, c_proj = linear_forward(o, p["attn.proj.w"], p["attn.proj.b"])         # (B, R, D)
    if not keep:
        o = c_proj = None                                 # (its cache holds o)
    c_att = MHSACache(c_lin, c_core, c_proj) if keep else None
    some = None if rows is None else (rows, x.shape[1])   # masks: these rows of all N's
    a, m_a = _dropout_rows(a, cfg.dropout, rng, some)
    a, c_s1 = layer_scale_forward(a, p["ls1.g"]) if scaled else (a, None)     # (B, R, D)
    a, m_pa = drop_path_forward(a, drop_path, rng)
    x = (x if rows is None else x[:, rows]) + a                                # (B, R, D)
    h, c_n2 = normalize_forward(x, cfg.eps)                                    # (B, R, D)
    h, fc1_w, fc1_b, c_a2 = affine_into_linear_forward(h, p["norm2.w"], p["norm2.b"],
                                                       p["mlp.fc1.w"], p["mlp.fc1.b"])
    if not keep:
        c_n2 = c_a2 = a = c_s1 = None                     # read: let them go before the MLP
    m, c_mlp = mlp_forward(h, fc1_w, fc1_b, p["mlp.fc2.w"], p["mlp.fc2.b"], cfg.gelu,
                           cfg.dropout, rng, some, keep)
    h = None
    m, c_s2 = layer_scale_forward(m, p["ls2.g"]) if scaled else (m, None)     # (B, R, D)
    m, m_pm = drop_path_forward(m, drop_path, rng)
    x = x + m                                                                  # (B, R, D)
    if not keep:
        return x, None
    c_mlp = c_mlp._replace(fc1=_linear_cache(c_mlp.fc1))                      # remade in backward
    Q = None if rows is None else rows.stop
    return x, BlockCache(c_n1, c_a1, c_att, m_a, c_s1, m_pa, c_n2, c_a2, c_mlp, c_s2, m_pm, Q)



CORE_BACKWARD = {                                         # attention's backward by its cache
    AttentionCache: attention_backward,                   # keys first (NumPy)
    ReferenceAttentionCache: attention_backward_gpu,      # queries first, fused (CuPy)
    streamed_attention.StreamedCache: streamed_attention.attention_backward,
}


def _linear_cache(c_linear: tuple, inputs: tuple = (None, None)) -> tuple:
    """A linear layer's cache (x2, w, shape) with its input and weight replaced: dropped
    (None, None), or remade (x (..., Din), w) by affine_linear_inputs."""
    _, _, shape = c_linear
    x, w = inputs
    return (None if x is None else x.reshape(-1, shape[-1])), w, shape


def block_backward(dx, cache: BlockCache) -> tuple:
    """Returns dx and a dict of this block's grads by short name."""
    c = cache
    g = {}
    dm = drop_path_backward(dx, c.path_mlp)
    if c.scale_mlp is not None:
        dm, g["ls2.g"] = layer_scale_backward(dm, c.scale_mlp)
    xhat = c.norm2[0]
    c_mlp = c.mlp._replace(fc1=_linear_cache(c.mlp.fc1, affine_linear_inputs(xhat, c.affine2)))
    dh, dfc1_w, dfc1_b, g["mlp.fc2.w"], g["mlp.fc2.b"] = mlp_backward(dm, c_mlp)
    dh, g["norm2.w"], g["norm2.b"], g["mlp.fc1.w"], g["mlp.fc1.b"] = \
        affine_into_linear_backward(dh, dfc1_w, dfc1_b, xhat, c.affine2)
    dx = dx + normalize_backward(dh, c.norm2)
    da = drop_path_backward(dx, c.path_attn)
    if c.scale_attn is not None:
        da, g["ls1.g"] = layer_scale_backward(da, c.scale_attn)
    da = dropout_backward(da, c.drop_attn)
    xhat = c.norm1[0]
    c_att = c.attn._replace(qkv=_linear_cache(c.attn.qkv, affine_linear_inputs(xhat, c.affine1)))
    do, g["attn.proj.w"], g["attn.proj.b"] = linear_backward(da, c_att.proj)
    core_backward = CORE_BACKWARD[type(c_att.core)]     # the pair the forward ran
    dh, dqkv_w, dqkv_b = linear_backward(core_backward(do, c_att.core), c_att.qkv)
    dh, g["norm1.w"], g["norm1.b"], g["attn.qkv.w"], g["attn.qkv.b"] = \
        affine_into_linear_backward(dh, dqkv_w, dqkv_b, xhat, c.affine1)
    dh = normalize_backward(dh, c.norm1)
    if c.queries is not None:                             # the residual reached the first rows only
        dh[:, :c.queries] += dx
        return dh, g
    return dx + dh, g


def block_attention(cache: BlockCache):
    """The block's attention probabilities (B, H, Q, N) (Q = N unless queries was given)."""
    return cache.attn.core.maps()
