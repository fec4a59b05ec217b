"""The MLP and the pre-norm Transformer encoder block, composed from the pairs of the other modules."""
from __future__ import annotations

from typing import NamedTuple

from .activations import GELU
from .attention import MHSACache, attention_probs, mhsa_backward, mhsa_forward
from .dropout import drop_path_backward, drop_path_forward, dropout_backward, dropout_forward
from .linear import linear_backward, linear_forward
from .norm import layernorm_backward, layernorm_forward
from .scale import layer_scale_backward, layer_scale_forward


class MLPCache(NamedTuple):
    fc1: tuple
    act: tuple                 # the GELU's cache
    drop_hidden: object        # dropout mask after the GELU, or None
    fc2: tuple
    drop_out: object           # dropout mask after fc2, or None
    gelu: str


class BlockCache(NamedTuple):
    """What block_backward reads, by name (attention maps read .attn.core.probs)."""
    norm1: tuple
    attn: MHSACache
    drop_attn: object          # dropout mask on the attention branch, or None
    scale_attn: tuple | None   # LayerScale of the attention branch, or None
    path_attn: object          # drop-path mask on the attention branch, or None
    norm2: tuple
    mlp: MLPCache
    scale_mlp: tuple | None    # LayerScale of the MLP branch, or None
    path_mlp: object           # drop-path mask on the MLP branch, or None


def mlp_forward(x, w1, b1, w2, b2, gelu: str = "tanh", dropout: float = 0.0, rng=None):
    """y = drop(drop(gelu(x @ w1 + b1)) @ w2 + b2), w1 (D, F), w2 (F, D).
    d: the linear, dropout and GELU pairs in reverse."""
    act_forward, _ = GELU[gelu]
    h, c_fc1 = linear_forward(x, w1, b1)                  # (B, N, F)
    h, c_act = act_forward(h)                             # (B, N, F)
    h, m_h = dropout_forward(h, dropout, rng)             # (B, N, F)
    y, c_fc2 = linear_forward(h, w2, b2)                  # (B, N, D)
    y, m_y = dropout_forward(y, dropout, rng)             # (B, N, D)
    return y, MLPCache(c_fc1, c_act, m_h, c_fc2, m_y, gelu)


def mlp_backward(dy, cache: MLPCache):
    _, act_backward = GELU[cache.gelu]
    dh, dw2, db2 = linear_backward(dropout_backward(dy, cache.drop_out), cache.fc2)
    dh = act_backward(dropout_backward(dh, cache.drop_hidden), cache.act)
    dx, dw1, db1 = linear_backward(dh, cache.fc1)
    return dx, dw1, db1, dw2, db2


def block_forward(x, p: dict, cfg, *, drop_path: float = 0.0, rng=None):
    """Pre-norm encoder block on x (B, N, D); p holds this block's params by short name
    (cfg.block_keys()); cfg gives heads, gelu, eps, dropout, attn_dropout and layer_scale:
        x = x + drop_path(ls1 * drop(mhsa(norm1(x))))
        x = x + drop_path(ls2 * mlp(norm2(x)))
    (ls1, ls2: LayerScale vectors when cfg.layer_scale is set, else 1.)
    d: each residual passes dx straight through and adds its branch's input gradient."""
    scaled = cfg.layer_scale is not None
    h, c_n1 = layernorm_forward(x, p["norm1.w"], p["norm1.b"], cfg.eps)       # (B, N, D)
    a, c_att = mhsa_forward(h, p["attn.qkv.w"], p["attn.qkv.b"], p["attn.proj.w"],
                            p["attn.proj.b"], cfg.heads, cfg.attn_dropout, rng)   # (B, N, D)
    a, m_a = dropout_forward(a, cfg.dropout, rng)
    a, c_s1 = layer_scale_forward(a, p["ls1.g"]) if scaled else (a, None)
    a, m_pa = drop_path_forward(a, drop_path, rng)
    x = x + a                                                                  # (B, N, D)
    h, c_n2 = layernorm_forward(x, p["norm2.w"], p["norm2.b"], cfg.eps)       # (B, N, D)
    m, c_mlp = mlp_forward(h, p["mlp.fc1.w"], p["mlp.fc1.b"], p["mlp.fc2.w"], p["mlp.fc2.b"],
                           cfg.gelu, cfg.dropout, rng)                         # (B, N, D)
    m, c_s2 = layer_scale_forward(m, p["ls2.g"]) if scaled else (m, None)
    m, m_pm = drop_path_forward(m, drop_path, rng)
    x = x + m                                                                  # (B, N, D)
    return x, BlockCache(c_n1, c_att, m_a, c_s1, m_pa, c_n2, c_mlp, c_s2, m_pm)


def block_backward(dx, cache: BlockCache) -> tuple:
    """Returns dx (B, N, D) and a dict of this block's grads by short name."""
    c, g = cache, {}
    dm = drop_path_backward(dx, c.path_mlp)
    if c.scale_mlp is not None:
        dm, g["ls2.g"] = layer_scale_backward(dm, c.scale_mlp)
    dh, g["mlp.fc1.w"], g["mlp.fc1.b"], g["mlp.fc2.w"], g["mlp.fc2.b"] = mlp_backward(dm, c.mlp)
    dh, g["norm2.w"], g["norm2.b"] = layernorm_backward(dh, c.norm2)
    dx = dx + dh                                          # (B, N, D)
    da = drop_path_backward(dx, c.path_attn)
    if c.scale_attn is not None:
        da, g["ls1.g"] = layer_scale_backward(da, c.scale_attn)
    da = dropout_backward(da, c.drop_attn)
    dh, g["attn.qkv.w"], g["attn.qkv.b"], g["attn.proj.w"], g["attn.proj.b"] = \
        mhsa_backward(da, c.attn)
    dh, g["norm1.w"], g["norm1.b"] = layernorm_backward(dh, c.norm1)
    return dx + dh, g


def block_attention(cache: BlockCache):
    """The block's attention probabilities (B, H, N, N)."""
    return attention_probs(cache.attn.core)
