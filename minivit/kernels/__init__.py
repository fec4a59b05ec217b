"""The fast kernels: the same functions as the reference pairs in layers/, computed faster.

layers/ is the definition of correct: one plain forward/backward pair per op. Each module here
holds a variant of one of them with the same signature and the same results (exactly where the
operations are the same, to float rounding where BLAS sums in another order), proven by
tests/kernels/:

    block.py      the encoder block (LayerNorm affine folding, caches that remake their inputs,
                  the last block's class rows alone under CLS pooling)
    attention.py  attention with keys-first scores (NumPy), with fused softmax (CuPy)
    streamed.py   attention over blocks of queries and keys (a shift per row): no (N, N) scores
    norm.py       LayerNorm split into normalize and an affine that folds into the next linear
    gelu.py       the GELU in cache-sized chunks through exp; a float32 normal CDF without erf
    linear.py     the linear pair with matrix-vector column sums
    reduce.py     short-axis sums as matrix-vector products
    fused.py      CuPy elementwise kernels
    split.py      a small batch's tokens over worker threads (inference)

`plan()` below is the one place that chooses between them, by backend, size and mode. Switch every
kernel off with `kernels.off()` (or MINIVIT_KERNELS=off in the environment) and the model runs
the reference pairs alone, one piece at a time.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, NamedTuple

import numpy as np

from ..layers import block as reference
from ..parallel.threads import Runtime
from . import block as fast
from .split import token_split_block_forward

_enabled = os.environ.get("MINIVIT_KERNELS", "on").lower() not in ("off", "0", "false", "no")


def on() -> None:
    """Use the fast kernels (the default)."""
    global _enabled
    _enabled = True


def off() -> None:
    """Run the reference pairs of layers/ alone (and the batch as one piece)."""
    global _enabled
    _enabled = False


def enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def disabled():
    """with kernels.disabled(): ... runs the reference engine inside the block."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


# Where streamed attention (streamed.py) takes the keys-first kernel's place (streamed_attention):
# from this many tokens N on. benchmarks/streamed_crossover.py times one attention core of each
# (D=768, H=12, batch 1..4, with the model's thread counts): from here on the streamed one is
# faster, forward and training step alike, and needs a small fraction of the memory (no
# (N, B, H, N) scores). Below it the forward alone is about level and the training step slower
# (the backward remakes the probabilities the keys-first kernel keeps).
STREAMED_MIN_TOKENS = 577
# Training streams from the same token count. The keys-first kernel keeps every block's
# (B, H, N, N) probabilities for the backward, from STREAMED_MIN_TOKENS on the largest part of a
# training step's memory; the streamed backward remakes them instead (one more product per block
# pair) and is still no slower there (benchmarks/README.md, scale table).


def streamed_attention(cfg, batch: int, xp, *, train: bool) -> bool:
    """Whether plan() runs attention streamed: on NumPy only (CuPy keeps its fused queries-first
    kernel), from STREAMED_MIN_TOKENS tokens; in training only without attention dropout (the
    streamed kernel never forms the probabilities a dropout mask would multiply)."""
    if xp is not np or cfg.num_tokens < STREAMED_MIN_TOKENS:
        return False
    return not train or cfg.attn_dropout == 0


class Plan(NamedTuple):
    """How the model runs one forward (and the backward of it)."""
    block_forward: Callable     # (x, p, cfg, *, drop_path, rng) -> (y, cache)
    last_block_forward: Callable  # the same for the last block: may return only the rows the
                                # head reads (B, Q, D)
    block_backward: Callable    # (dy, cache) -> (dx, grads by short name)
    pieces: list                # the batch's pieces (slices), each run on its own worker thread
    one_piece_cores: bool       # give a one-piece pass every core's BLAS threads first


def plan(cfg, batch: int, xp, *, train: bool, maps: bool, runtime: Runtime) -> Plan:
    """The kernels for a forward of `batch` images on array module xp: the reference pairs when
    kernels are off; otherwise the fast block, and on NumPy the batch split over the runtime's
    worker threads (the model's: runtime.split_batch), or for a one-piece inference the tokens
    (runtime.split_tokens, the token split bound to run on that runtime's workers).
    The last block computes only the class rows when CLS pooling reads nothing else and no
    attention maps are asked for (maps); on CuPy every block computes every row.
    Attention runs streamed (streamed.py) where streamed_attention() says so: on NumPy, from
    STREAMED_MIN_TOKENS tokens, and never in training with attention dropout
    (attn_dropout > 0: the keys-first kernel, which draws the reference's masks).
    Attention maps (maps) do not change the choice: a streamed block remakes its probabilities
    for the maps alone from each row's saved log-sum-exp (StreamedCache.maps). Where the token
    split runs a one-piece inference, each part streams its query rows by the same rule.
    Inference without maps keeps nothing: the blocks run with keep=False (no cache; each
    activation let go once read), as the token split's parts do."""
    whole = [slice(0, batch)]
    if not _enabled:
        return Plan(reference.block_forward, reference.block_forward, reference.block_backward,
                    whole, False)
    numpy = xp is np
    pieces = runtime.split_batch(batch, cfg.num_tokens * cfg.dim) if numpy else whole
    block, all_cores = fast.block_forward, numpy and len(pieces) == 1
    parts = runtime.split_tokens(batch, cfg.num_tokens, cfg.dim) \
        if all_cores and not train and not maps else []
    streamed = streamed_attention(cfg, batch, xp, train=train)
    if parts:                                             # the workers share the cores out
        block, all_cores = functools.partial(token_split_block_forward, parts=parts,
                                             streamed=streamed, runtime=runtime), False
    elif streamed or not (train or maps):
        block = functools.partial(fast.block_forward, streamed=streamed, keep=train or maps)
    last = block
    if numpy and cfg.pool == "cls" and not maps:
        last = functools.partial(block, queries=cfg.num_class_tokens)
    return Plan(block, last, fast.block_backward, pieces, all_cores)
