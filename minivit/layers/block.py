"""MLP and the pre-norm Transformer encoder block, composed from the pairs of the other modules."""
from __future__ import annotations

from typing import NamedTuple

from .. import backend
from .activations import GELU, gelu_output, gelu_remake
from .attention import MHSACache, attention_forward, attention_probs, mhsa_backward
from .dropout import drop_path_backward, drop_path_forward, dropout_backward, dropout_forward
from .linear import linear_backward, linear_forward
from .norm import (AffineCache, affine_into_linear_backward, affine_into_linear_forward,
                   affine_linear_inputs, normalize_backward, normalize_forward)
from .scale import layer_scale_backward, layer_scale_forward


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


def mlp_forward(x, w1, b1, w2, b2, gelu: str = "tanh", dropout: float = 0.0, rng=None):
    """y = drop(drop(gelu(x @ w1 + b1)) @ w2 + b2), w1 (D, F), w2 (F, D).
    d: the linear, dropout and GELU pairs in reverse. The cache does not keep fc2's input
    drop(gelu(h)) (B, N, F), the largest activation of a block: backward remakes it from the
    GELU's cache with the forward's own multiplications (the same bits, one cheap pass)."""
    act_forward, _ = GELU[gelu]
    h, c_fc1 = linear_forward(x, w1, b1)                  # (B, N, F)
    h, c_act = act_forward(h)                             # (B, N, F)
    h, m_h = dropout_forward(h, dropout, rng)             # (B, N, F)
    y, (_, _, h_shape) = linear_forward(h, w2, b2)        # (B, N, D)
    y, m_y = dropout_forward(y, dropout, rng)             # (B, N, D)
    return y, MLPCache(c_fc1, c_act, m_h, (None, w2, h_shape), m_y, gelu)


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


def block_forward(x, p: dict, cfg, *, drop_path: float = 0.0, rng=None, cls_only: bool = False,
                  queries: int | None = None):
    """Pre-norm encoder block on x (B, N, D); p holds this block's params by short name
    (cfg.block_keys()); cfg gives heads, gelu, eps, dropout, attn_dropout and layer_scale:
        x = x + drop_path(ls1 * drop(mhsa(norm1(x))))
        x = x + drop_path(ls2 * mlp(norm2(x)))
    (ls1, ls2: LayerScale vectors when cfg.layer_scale, else 1.) Each LayerNorm's affine goes
    onto its rows or into the qkv and fc1 weights, whichever is less work (norm.py); the
    function is the same. The cache keeps neither the qkv and fc1 inputs nor their (folded)
    weights (up to 7 + 9 MB each per block and batch piece for ViT-B/16): backward remakes
    them from normalize's output, the same bits in a fraction of a millisecond.
    queries=Q: return only the first Q rows (B, Q, D), exactly; their attention still reads every
    token (Q = 1, cls_only=True: the CLS row; Q = 2: CLS and distillation rows).
    Two halves, each its own function: block_qkv_forward (every token's q, k, v) and
    block_rows_forward (the rest, for any rows: the attention of those queries onwards); the
    model runs them over token pieces on worker threads for a small batch.
    d: each residual passes dx straight through and adds its branch's input gradient."""
    Q = 1 if cls_only else queries
    qkv, c_qkv = block_qkv_forward(x, p, cfg, queries=Q)                       # (B, N, 3D)
    return block_rows_forward(x, qkv, c_qkv, p, cfg, rows=None if Q is None else slice(0, Q),
                              drop_path=drop_path, rng=rng)


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
                       drop_path: float = 0.0, rng=None) -> tuple:
    """The block's second half for the token rows `rows` (None: all) of x (B, N, D), given every
    token's qkv (B, N, 3D): their attention (all keys), projection, residual and MLP branch.
    Returns those rows of the block's output (B, R, D) and the BlockCache (backward supports
    rows=None or slice(0, Q): what block_forward passes)."""
    scaled = cfg.layer_scale is not None
    c_n1, c_a1, c_lin = c_qkv
    o, c_core = attention_forward(qkv, cfg.heads, cfg.attn_dropout, rng, rows)   # (B, R, D)
    a, c_proj = linear_forward(o, p["attn.proj.w"], p["attn.proj.b"])         # (B, R, D)
    c_att = MHSACache(c_lin, c_core, c_proj)
    a, m_a = dropout_forward(a, cfg.dropout, rng)
    a, c_s1 = layer_scale_forward(a, p["ls1.g"]) if scaled else (a, None)     # (B, R, D)
    a, m_pa = drop_path_forward(a, drop_path, rng)
    x = (x if rows is None else x[:, rows]) + a                                # (B, R, D)
    h, c_n2 = normalize_forward(x, cfg.eps)                                    # (B, R, D)
    h, fc1_w, fc1_b, c_a2 = affine_into_linear_forward(h, p["norm2.w"], p["norm2.b"],
                                                       p["mlp.fc1.w"], p["mlp.fc1.b"])
    m, c_mlp = mlp_forward(h, fc1_w, fc1_b, p["mlp.fc2.w"], p["mlp.fc2.b"], cfg.gelu,
                           cfg.dropout, rng)
    m, c_s2 = layer_scale_forward(m, p["ls2.g"]) if scaled else (m, None)     # (B, R, D)
    m, m_pm = drop_path_forward(m, drop_path, rng)
    x = x + m                                                                  # (B, R, D)
    c_mlp = c_mlp._replace(fc1=_linear_cache(c_mlp.fc1))                      # remade in backward
    Q = None if rows is None else rows.stop
    return x, BlockCache(c_n1, c_a1, c_att, m_a, c_s1, m_pa, c_n2, c_a2, c_mlp, c_s2, m_pm, Q)


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
    dh, dqkv_w, dqkv_b, g["attn.proj.w"], g["attn.proj.b"] = mhsa_backward(da, c_att)
    dh, g["norm1.w"], g["norm1.b"], g["attn.qkv.w"], g["attn.qkv.b"] = \
        affine_into_linear_backward(dh, dqkv_w, dqkv_b, xhat, c.affine1)
    dh = normalize_backward(dh, c.norm1)
    if c.queries is not None:                             # the residual reached the first rows only
        dh[:, :c.queries] += dx
        return dh, g
    return dx + dh, g


def block_attention(cache: BlockCache):
    """The block's attention probabilities (B, H, Q, N) (Q = N unless queries was given)."""
    return attention_probs(cache.attn.core)
