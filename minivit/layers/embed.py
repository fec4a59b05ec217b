"""Image to tokens: patchify, linear patch embedding, CLS token, position embeddings."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import UserError
from .linear import linear_backward, linear_forward


def patchify(x, p: int):
    """Images (B, C, H, W) -> patches (B, P, p*p*C), P = (H/p)(W/p) in row-major grid order;
    inside a patch the index is (i*p + j)*C + c (row in patch, column in patch, channel).
    A pure permutation, so its derivative is the inverse permutation, unpatchify."""
    B, C, H, W = x.shape
    gh, gw = H // p, W // p
    x6 = x.reshape(B, C, gh, p, gw, p).transpose(0, 2, 4, 3, 5, 1)   # (B, gh, gw, p, p, C)
    return x6.reshape(B, gh * gw, p * p * C)              # (B, P, p*p*C), one copy


def unpatchify(patches, p: int, C: int, H: int, W: int):
    """Inverse of patchify: (B, P, p*p*C) -> (B, C, H, W). Also patchify's backward."""
    B = patches.shape[0]
    gh, gw = H // p, W // p
    x6 = patches.reshape(B, gh, gw, p, p, C).transpose(0, 5, 1, 3, 2, 4)   # (B, C, gh, p, gw, p)
    return x6.reshape(B, C, H, W)


def patch_embed_forward(x, w, b, p: int):
    """tokens = patchify(x) @ w + b, w (p*p*C, D): a stride-p, p x p convolution.
    d: dpatches = dtokens @ w^T, dx = unpatchify(dpatches); dw = patches^T dtokens; db = sum dtokens."""
    y, c_lin = linear_forward(patchify(x, p), w, b)       # (B, P, D)
    return y, (c_lin, p, x.shape)


def patch_embed_backward(dy, cache):
    c_lin, p, (B, C, H, W) = cache
    dpatches, dw, db = linear_backward(dy, c_lin)         # (B, P, p*p*C)
    return unpatchify(dpatches, p, C, H, W), dw, db


def cls_forward(tokens, cls):
    """x = [cls; tokens] along the token axis: (B, P, D), (1, 1, D) -> (B, N, D), N = P + 1.
    d: dtokens = dx[:, 1:], dcls = sum_b dx[b, 0]."""
    xp = backend.xp_of(tokens)
    B, P, D = tokens.shape
    x = xp.empty((B, P + 1, D), dtype=tokens.dtype)       # (B, N, D)
    x[:, 0] = cls[0]
    x[:, 1:] = tokens
    return x, None


def cls_backward(dx, cache=None):
    return dx[:, 1:], dx[:, :1].sum(0, keepdims=True)    # (B, P, D), (1, 1, D)


def insert_tokens_forward(x, tokens, at: int = 0):
    """Learned tokens (1, R, D) inserted into every sequence x (B, M, D) before row `at`:
    y = [x[:, :at]; tokens; x[:, at:]], (B, M + R, D). The CLS, distillation and register
    tokens all enter this way.
    d: dx = dy without rows at..at+R-1,  dtokens = sum_b dy[b, at:at+R]."""
    xp = backend.xp_of(x)
    B, M, D = x.shape
    R = tokens.shape[1]
    y = xp.empty((B, M + R, D), dtype=x.dtype)           # (B, M + R, D)
    y[:, :at] = x[:, :at]
    y[:, at:at + R] = tokens[0]
    y[:, at + R:] = x[:, at:]
    return y, (at, R)


def insert_tokens_backward(dy, cache):
    at, R = cache
    xp = backend.xp_of(dy)
    dx = dy[:, R:] if at == 0 else xp.concatenate([dy[:, :at], dy[:, at + R:]], 1)   # (B, M, D)
    return dx, dy[:, at:at + R].sum(0, keepdims=True)                  # (B, M, D), (1, R, D)


def pos_embed_forward(x, pos):
    """y = x + pos, pos (1, N, D) broadcast over the batch.  d: dx = dy, dpos = sum_b dy."""
    return x + pos, None


def pos_embed_backward(dy, cache=None):
    return dy, dy.sum(0, keepdims=True)                   # (B, N, D), (1, N, D)


def sincos_2d(grid: int, dim: int, dtype="float32") -> np.ndarray:
    """Fixed 2-D sin-cos position table (1, 1 + grid^2, dim) on the host; row 0 (CLS) is zero.
    Patch at grid row r, column c: [sin(r w), cos(r w), sin(c w), cos(c w)], w_k = 10000^(-k/(dim/4))."""
    if dim % 4:
        raise UserError(f"pos_embed='sincos' needs dim divisible by 4, got dim={dim}; "
                        f"use a dim divisible by 4 or pos_embed='learned'")
    d4 = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(d4, dtype=np.float64) / d4)    # (d4,)
    r, c = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    r = r.reshape(-1, 1) * omega                          # (P, d4)
    c = c.reshape(-1, 1) * omega                          # (P, d4)
    table = np.concatenate([np.sin(r), np.cos(r), np.sin(c), np.cos(c)], axis=1)  # (P, D)
    table = np.concatenate([np.zeros((1, dim)), table])   # (N, D)
    return table[None].astype(dtype)                      # (1, N, D)
