"""A small batch's tokens over the worker threads, for inference.

A batch too small to split by images (parallel/threads.py Runtime.split_batch) runs its row-wise
work (LayerNorm, the linear layers, the GELU) and its attention by query rows on the runtime's
worker threads instead, each over a share of the tokens. Every row gets the operations one pass
would give it. Each part's attention reads every key: with the keys-first kernel (attention.py)
or, where the plan streams attention (many tokens), the streamed kernel over the part's query
rows.
"""
from __future__ import annotations

from .. import backend
from ..parallel.threads import Runtime
from .block import block_qkv_forward, block_rows_forward


def token_split_block_forward(x, p: dict, cfg, *, parts: list, runtime: Runtime,
                              drop_path: float = 0.0, rng=None, queries: int | None = None,
                              streamed: bool = False):
    """block.block_forward for inference (no masks, no cache) with x's token rows split into
    `parts` (slices of range(N)), in two rounds on runtime's worker threads (kernels.plan binds
    the model's): each part's q, k, v, gathered into the whole qkv (B, N, 3D); then each part's
    rows onwards, their attention reading every key. queries=Q: only the first Q rows of the
    output, as in block_forward. streamed=True: each part's attention streamed (streamed.py)
    instead of keys-first."""
    if rng is not None:
        raise ValueError("the token split is for inference: it takes no dropout masks")
    xp = backend.xp_of(x)
    qkv = xp.concatenate(runtime.parallel_map(
        lambda r: block_qkv_forward(x[:, r], p, cfg, _part_queries(queries, r))[0],
        parts), axis=1)                                                       # (B, N, 3D)
    rows = [slice(0, queries)] if queries else parts
    y = xp.concatenate(runtime.parallel_map(
        lambda r: block_rows_forward(x, qkv, (None, None, None), p, cfg, rows=r,
                                     streamed=streamed, keep=False)[0],
        rows), axis=1)                                                        # (B, N|Q, D)
    return y, None


def _part_queries(queries, part: slice):
    """How many leading rows of the token slice `part` need their q when only the first
    `queries` tokens do (None: all of them)."""
    return None if queries is None else max(0, min(queries, part.stop) - part.start)
