"""Where the CLS token looks: per-layer CLS attention and attention rollout (Abnar & Zuidema
2020, "Quantifying Attention Flow in Transformers"). render.py draws them
(`python examples/attention_maps.py`).

    logits, attn = model.forward(x, return_attention=True)   # depth x (B, H, N, N)
    R = attention_rollout(attn)                               # (B, N, N), rows sum to 1
    maps = cls_maps(R, grid, prefix)                          # (B, g, g): CLS row over patches

prefix is the number of tokens before the patches (CLS, then a distillation token and
registers: ViTConfig.num_prefix_tokens); attention_maps(model, x) does all three for a model.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import UserError
from ..resample import interp_matrix
from ..training.evaluate import softmax

__all__ = ["attention_rollout", "cls_maps", "upsample", "attention_maps"]


def attention_rollout(attn: list, add_identity: bool = True):
    """R = A'_L @ ... @ A'_1 with A'_l = rownorm(mean_h A_l + I) (the residual path as identity).
    Each A'_l is row-stochastic, so every row of R sums to 1. attn: depth x (B, H, N, N)."""
    if not attn:
        raise UserError("attention_rollout needs at least one layer's attention (B, H, N, N)")
    xp = backend.xp_of(attn[0])
    B, H, N, _ = attn[0].shape
    eye = xp.eye(N, dtype=attn[0].dtype)                              # (N, N)
    R = xp.broadcast_to(eye, (B, N, N)).copy()                        # (B, N, N)
    for a in attn:
        if a.shape != (B, H, N, N):
            raise UserError(f"every layer's attention must be {(B, H, N, N)}, got {a.shape}")
        A = a.mean(1)                                                 # (B, N, N)
        if add_identity:
            A = A + eye
        A = A / A.sum(-1, keepdims=True)                              # (B, N, N) rows sum to 1
        R = A @ R                                                     # later layers on the left
    return R


def cls_maps(A, grid: int, prefix: int = 1, query: str = "cls"):
    """The CLS query row over the patch tokens, as a grid: A (B, N, N) -> (B, g, g); a
    per-head A (B, H, N, N) is averaged over heads first.

    The tokens are `prefix` tokens (CLS first, then a distillation token and register tokens:
    ViTConfig.num_prefix_tokens) and then the g x g patches in row order, N = prefix + g^2. Only
    the patch columns are kept: the map shows where CLS looks in the image, not what it gives
    itself, the distillation token or the registers. query='mean': the mean of the patch
    tokens' rows instead of the CLS row, for a model without a CLS token (mean pooling)."""
    if A.ndim == 4:
        A = A.mean(1)                                                 # (B, N, N)
    B, N, _ = A.shape
    if N != grid * grid + prefix:
        raise UserError(f"attention over N={N} tokens does not fit a {grid}x{grid} grid plus "
                        f"{prefix} prefix token(s) (CLS, distillation, registers: N = "
                        f"{grid * grid + prefix}); pass the model's grid and "
                        f"num_prefix_tokens")
    if query == "cls":
        rows = A[:, 0, prefix:]                                       # (B, g*g)
    elif query == "mean":
        rows = A[:, prefix:, prefix:].mean(1)                         # (B, g*g)
    else:
        raise UserError(f"query must be 'cls' or 'mean', got {query!r}")
    return rows.reshape(B, grid, grid)                                # (B, g, g)


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """(B, g, g) -> (B, S, S) bilinear with pixel centres aligned, on the host."""
    maps = backend.to_numpy(maps).astype(np.float64)
    W = interp_matrix(maps.shape[-1], size, "bilinear", align_corners=False)   # (S, g)
    return np.einsum("ai,bij,cj->bac", W, maps, W)                    # (B, S, S)


def attention_maps(model, x) -> dict:
    """Eval forward of normalized images x (B, C, S, S); host float64 arrays:
    'layers' (B, L, g, g) each layer's CLS attention (mean over heads) over the patches,
    'rollout' (B, g, g) the rollout's CLS row over the patches, 'probs' (B, K) (None for a
    model without a head, whose forward gives features), and 'query': 'cls', or 'mean' for a
    model without a CLS token, whose maps are the mean of the patch rows (cls_maps).

    The rollout runs over every token, registers and a distillation token included, since
    attention flows through them; only the map is read over the patches."""
    cfg = model.config
    out, attn = model.forward(x, return_attention=True)
    attn = [backend.to_numpy(a).astype(np.float64) for a in attn]     # L x (B, H, N, N)
    g, T = cfg.grid, cfg.num_prefix_tokens
    query = "cls" if cfg.class_token else "mean"
    layers = np.stack([cls_maps(a, g, T, query) for a in attn], axis=1)     # (B, L, g, g)
    rollout = cls_maps(attention_rollout(attn), g, T, query)          # (B, g, g)
    probs = softmax(backend.to_numpy(out)) if cfg.num_classes else None
    return {"layers": layers, "rollout": rollout, "probs": probs, "query": query}
