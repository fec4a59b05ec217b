"""Streamed attention: layers/attention.py's attention pair (tests/kernels prove it equal) computed
over blocks of queries and keys, never holding the (B, H, N, N) scores.

The forward walks the keys block by block, summing each query row's exponentials shifted by the
row's own score (the query against its own key; a running maximum, the online softmax, where
that would leave float range: docs/derivations.md section 8.5), and keeps only the output O and
each query row's log-sum-exp L. The backward remakes each block's probabilities from L,
P = exp(S - L), and takes softmax's row sum from D = rowsum(dO * O). Memory grows as N (times
Dh) instead of N^2: long token sequences (large images, small patches) fit where the whole score
matrix would not, and each block's scores stay in the cache while they are used.

A tile is one image's block of heads (as many as fit, down to one) by a block of queries by a
block of keys: each head's products are then large (hundreds of rows each way) while the tile
stays in the cache for the passes over it. Inside a tile the scores are stored keys first,
(bk, h, bq), as in attention.py: the running max and sum run down the first axis across rows
h*bq long. The loop over tiles is a loop over cache-sized pieces of work, each a few large
products (benchmarks/streamed_crossover.py --block-h measures it against other tilings).

In base 2: e^S = 2^(S log2 e), so the queries' scale 1/sqrt(Dh) takes the factor log2 e and
every exponential is NumPy's exp2, which is faster than its exp on float32 and as accurate
(docs/derivations.md 8.5, step 7); the log-sum-exp is kept in base 2 as well.

Each row's shift rides in the products (8.5, step 8): [q | -c] [k | 1]^T = q k^T - c, so a
score block comes out of its product already shifted, in the forward (c the row's own score) and
in the backward (the saved log-sum-exp, and D beside dO): no pass over the scores for it.

No attention dropout: it would need the dropped probabilities, block by block, from one mask
source; the plan (kernels.plan) runs this kernel only where attention dropout is off.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import backend
from .reduce import col_sum, row_sum

# Default tile sizes (block_sizes): a tile's scores (h, bq, bk) stay in the cache while its max,
# exp, sum and products read them, and each head's products are large enough for BLAS's rate.
TILE_BYTES = 2 << 20    # one tile's scores at most this many bytes (the backward holds two)...
BLOCK_K = 1024          # ... of at most this many keys...
MIN_BLOCK_Q = 128       # ... and this many query rows at least (a tile of one head then may
                        # pass TILE_BYTES)
LOG2E, LN2 = 1 / math.log(2), math.log(2)   # scores in base 2: e^S = 2^(S log2 e)


class StreamedCache(NamedTuple):
    """What attention_backward reads: no probabilities, one log-sum-exp per query row (base 2)."""
    q: object           # (B, H, Q, Dh) view into qkv
    k: object           # (B, H, N, Dh) view into qkv
    v: object           # (B, H, N, Dh) view into qkv
    out: object         # (B, Q, H, Dh) the output O (the projection's input: no extra memory)
    lse2: object        # (B, H, Q) L2 = log2 sum_j 2^(S2_ij), S2 = S log2 e: the softmax's
                        # normalizer in base 2 (L = L2 ln 2)
    scale: float        # 1 / sqrt(Dh)
    rows: slice         # the query rows computed (slice(0, N): all)
    blocks: tuple       # (bh, bq, bk) heads, query rows and key rows per tile

    def maps(self):
        """The attention probabilities (B, H, Q, N), one row per query, remade from L:
        A = exp(q k^T / sqrt(Dh) - L) = 2^(S2 - L2). O(N^2) memory: for the attention maps
        alone."""
        xp = backend.xp_of(self.q)
        a = (self.q * (self.scale * LOG2E)) @ self.k.swapaxes(-1, -2)   # (B, H, Q, N) S2
        a -= self.lse2[..., None]
        return xp.exp2(a, out=a)                               # (B, H, Q, N)


def block_sizes(heads: int, Q: int, N: int, itemsize: int,
                tile_bytes: int = TILE_BYTES) -> tuple:
    """(bh, bq, bk): at most BLOCK_K keys, as many query rows as keep one head's (bq, bk) scores
    within tile_bytes (at least MIN_BLOCK_Q), and as many of the image's heads as then fit
    (at least one); each axis is cut into blocks of equal size no larger (257 keys: two blocks
    of 129, not 256 and 1; 12 heads by 5: three tiles of 4)."""
    bk = _even(N, BLOCK_K)
    bq = _even(Q, max(MIN_BLOCK_Q, tile_bytes // (bk * itemsize)))
    bh = _even(heads, tile_bytes // (bq * bk * itemsize))
    return bh, bq, bk


def _even(n: int, most: int) -> int:
    """The size of ceil(n / most) blocks of equal size (the last one shorter) covering n."""
    parts = -(-n // max(1, most))
    return max(1, -(-n // max(1, parts)))


def _spans(n: int, size: int) -> list:
    """[slice(0, size), slice(size, 2 size), ...] covering range(n); the last may be shorter."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _scratch(buf, *shape):
    """A C-contiguous (shape) view at the front of the flat scratch buffer buf."""
    return buf[:int(np.prod(shape))].reshape(shape)


def attention_forward(qkv, heads: int, attn_dropout: float = 0.0, rng=None, queries=None,
                      block_q: int | None = None, block_k: int | None = None,
                      block_h: int | None = None):
    """out = softmax(q k^T / sqrt(Dh)) v per head, heads concatenated, from a fused qkv (B, N, 3D)
    laid out [q | k | v], streamed over key blocks, in base 2 (S2 = S log2 e, 2^S2 = e^S), each
    row shifted by its own score c_i = S2_ii:
        l = sum_j 2^(S2_ij - c_i),  acc = sum_j 2^(S2_ij - c_i) v_j;  O = acc / l,  L2 = c + log2 l,
    and a block of query rows whose sums leave float range again with the running max (online
    softmax): for each block of keys,
        m' = max(m, max_j S2_ij),  l' = 2^(m - m') l + sum_j 2^(S2_ij - m'),
        acc' = 2^(m - m') acc + sum_j 2^(S2_ij - m') v_j;   O = acc / l,  L2 = m + log2 l.
    queries=Q or slice(a, b): those query rows only, each over every key (as attention.py).
    block_q, block_k, block_h: query rows, key rows and heads per tile (default block_sizes());
    any sizes, the last block of each axis may be shorter. Attention dropout is not supported
    (ValueError).
    d: attention_backward: P = 2^(S2 - L2) again per block, D = rowsum(dO * O),
       dS = P (dP - D), dP = dO v^T;  dq = dS k / sqrt(Dh), dk = dS^T q / sqrt(Dh), dv = P^T dO."""
    if attn_dropout and rng is not None:
        raise ValueError(f"streamed attention has no attention dropout (attn_dropout="
                         f"{attn_dropout} in training): use kernels.attention's pair")
    xp = backend.xp_of(qkv)
    B, N, D3 = qkv.shape
    H, Dh = heads, D3 // (3 * heads)
    rows = queries if isinstance(queries, slice) else slice(0, queries)
    rows = slice(*rows.indices(N))
    qkv5 = qkv.reshape(B, N, 3, H, Dh).transpose(2, 0, 3, 1, 4)      # (3, B, H, N, Dh) view
    q, k, v = qkv5[0, :, :, rows], qkv5[1], qkv5[2]                  # (B, H, Q|N, Dh)
    Q, scale = q.shape[2], Dh ** -0.5
    blocks = _blocks(H, Q, N, qkv.dtype, block_h, block_q, block_k)
    bh, bq, bk = blocks
    out = xp.empty((B, Q, H, Dh), dtype=qkv.dtype)       # heads side by side
    o = out.transpose(0, 2, 1, 3)                         # (B, H, Q, Dh) view
    lse2 = xp.empty((B, H, Q), dtype=qkv.dtype)
    buf = xp.empty(bk * bh * bq, dtype=qkv.dtype)         # one tile's scores, reused
    for b, hs in _head_tiles(B, H, bh):
        k1 = _with_column(k[b, hs], 1)                    # (h, N, Dh + 1): [k | 1]
        for qs in _spans(Q, bq):
            qi = q[b, hs, qs] * (scale * LOG2E)           # (h, bq, Dh): scores in base 2
            own = k[b, hs, rows.start + qs.start:rows.start + qs.stop]   # each query's own key
            lse = _query_block_own_shift(qi, own, k1, v[b, hs], o[b, hs, qs], buf, bk)
            if lse is None:                               # out of float range: the running max
                lse = _query_block(qi, k[b, hs], v[b, hs], o[b, hs, qs], buf, bk)
            lse2[b, hs, qs] = lse
    return out.reshape(B, Q, H * Dh), StreamedCache(q, k, v, out, lse2, scale, rows, blocks)


def _blocks(heads: int, Q: int, N: int, dtype, block_h, block_q, block_k) -> tuple:
    """(bh, bq, bk): the sizes asked for (block_sizes() where None), at most H, Q and N."""
    bh, bq, bk = block_sizes(heads, Q, N, np.dtype(dtype).itemsize)
    bh, bq, bk = block_h or bh, block_q or bq, block_k or bk
    if bh < 1 or bq < 1 or bk < 1:
        raise ValueError(f"block sizes must be >= 1, got block_h={bh}, block_q={bq}, "
                         f"block_k={bk}")
    return min(bh, heads), min(bq, max(Q, 1)), min(bk, N)


def _head_tiles(B: int, H: int, bh: int) -> list:
    """[(image, slice of heads), ...]: each image's heads bh at a time."""
    return [(b, hs) for b in range(B) for hs in _spans(H, bh)]


def _with_column(x, c):
    """[x | c] (..., n + 1): x (..., n) with one more column holding c (a scalar, or (...) one
    value per row), C-contiguous. In a product, [a | c] [b | 1]^T = a b^T + c: a shift per row
    rides in the matrix product instead of a pass of its own (docs/derivations.md 8.5, step 8)."""
    xp = backend.xp_of(x)
    x1 = xp.empty(x.shape[:-1] + (x.shape[-1] + 1,), dtype=x.dtype)
    x1[..., :-1] = x
    x1[..., -1] = c
    return x1


def _query_block_own_shift(qi, own, k1, v, oi, buf, bk: int):
    """_query_block with one fixed shift per row instead of a running max: c_i = S2_ii, query
    i's score against its own key, one of the scores of its row. Every key block is then one
    product giving S2 - c directly, [qi | -c] [k | 1]^T, an exp2, a column sum and the product
    with v: no max, no subtraction, no rescaling. The row's own term is 2^0, so its sum is at
    least 1; a score above the row's own by more than float range overflows, and then (a
    finiteness check of the sums and the output) this returns None and the caller runs
    _query_block. qi (h, bq, Dh) scaled by log2(e) / sqrt(Dh); own (h, bq, Dh) the queries' own
    keys; k1 (h, N, Dh + 1) = [k | 1]; v (h, N, Dh). Writes O into oi (h, bq, Dh), returns
    L2 = c + log2 l (h, bq)."""
    xp = backend.xp_of(qi)
    h, nq, _ = qi.shape
    c = (qi * own).sum(-1)                                # (h, bq) S2_ii
    q1 = _with_column(qi, -c)                             # (h, bq, Dh + 1): [qi | -c]
    l = None                                              # the sum (h, bq)
    with np.errstate(over="ignore", invalid="ignore"):    # an overflow is checked for below
        for ks in _spans(k1.shape[1], bk):
            nk = ks.stop - ks.start
            pt = _scratch(buf, nk, h, nq)                 # (S2 - c)^T block, keys first
            xp.matmul(k1[:, ks], q1.swapaxes(-1, -2), out=pt.transpose(1, 0, 2))
            xp.exp2(pt, out=pt)                           # 2^(S2 - c), (bk, h, bq)
            p_sum = col_sum(pt.reshape(nk, -1)).reshape(h, nq)
            p = pt.transpose(1, 2, 0)                     # (h, bq, bk) view
            if l is None:
                l = p_sum
                xp.matmul(p, v[:, ks], out=oi)            # (h, bq, Dh)
            else:
                l += p_sum
                oi += p @ v[:, ks]
        oi /= l[..., None]                                # O = acc / l
    if not (bool(xp.isfinite(l).all()) and bool(xp.isfinite(oi).all())):
        return None                                       # overflowed (or non-finite input)
    return c + xp.log2(l)                                 # L2 = c + log2 l, (h, bq)


def _query_block(qi, k, v, oi, buf, bk: int):
    """One block of query rows qi (h, bq, Dh) of h heads, already scaled by log2(e) / sqrt(Dh)
    (so that qi k^T = S2), over every key of k, v (h, N, Dh), bk keys at a time, with a running
    max (online softmax): writes O into oi (h, bq, Dh) and returns L2 (h, bq). Never overflows;
    the forward runs it where _query_block_own_shift's sums leave float range."""
    xp = backend.xp_of(qi)
    h, nq, _ = qi.shape
    m = l = None                                          # running max and sum (h, bq)
    for ks in _spans(k.shape[1], bk):
        nk = ks.stop - ks.start
        pt = _scratch(buf, nk, h, nq)                     # S2^T block, keys first
        xp.matmul(k[:, ks], qi.swapaxes(-1, -2), out=pt.transpose(1, 0, 2))   # k q^T
        m_blk = pt.max(0)                                 # (h, bq)
        m_new = m_blk if m is None else xp.maximum(m, m_blk)
        pt -= m_new
        xp.exp2(pt, out=pt)                               # 2^(S2 - m'), (bk, h, bq)
        p_sum = col_sum(pt.reshape(nk, -1)).reshape(h, nq)   # sum over the block's keys
        p = pt.transpose(1, 2, 0)                         # (h, bq, bk) view
        if m is None:                                     # first block: nothing to rescale
            l = p_sum
            xp.matmul(p, v[:, ks], out=oi)                # (h, bq, Dh)
        else:
            alpha = xp.exp2(m - m_new)                    # 2^(m - m') <= 1, (h, bq)
            l = l * alpha + p_sum
            oi *= alpha[..., None]
            oi += p @ v[:, ks]                            # (h, bq, Dh)
        m = m_new
    oi /= l[..., None]                                    # O = acc / l
    return m + xp.log2(l)                                 # L2 = m + log2 l, (h, bq)


def attention_backward(dout, cache: StreamedCache):
    """dqkv (B, N, 3D) from dout (B, Q, D): per tile (image, heads, key block, query block),
    remake P = 2^(S2 - L2) = exp(q k^T / sqrt(Dh) - L) and
        dv += P^T dO,  dP = dO v^T,  dS = P (dP - D),
        dq += dS k / sqrt(Dh),  dk += dS^T q / sqrt(Dh),
    with D = rowsum(dO * O) (B, H, Q) made once: softmax's sum_j P_ij dP_ij without a whole row.
    The queries that make S2 carry log2 e / sqrt(Dh), so dk's sum takes ln 2 at the end, as dq
    takes 1 / sqrt(Dh)."""
    q, k, v, out, lse2, scale, rows, (bh, bq, bk) = cache
    xp = backend.xp_of(dout)
    B, H, Q, Dh = q.shape
    N = k.shape[2]
    do4 = dout.reshape(B, Q, H, Dh)                       # (B, Q, H, Dh) view
    delta = row_sum(do4 * out)[..., 0].transpose(0, 2, 1) # D = rowsum(dO * O), (B, H, Q)
    do = do4.transpose(0, 2, 1, 3)                        # (B, H, Q, Dh) view
    dqkv = (xp.zeros if Q < N else xp.empty)((B, N, 3, H, Dh), dtype=dout.dtype)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)            # (B, H, N, Dh) views into dqkv
    dq = dq[:, :, rows]                                   # (B, H, Q, Dh)
    buf = xp.empty((2, bk * bh * bq), dtype=dout.dtype)   # P^T and dS^T tiles, reused
    q_spans = _spans(Q, bq)
    for b, hs in _head_tiles(B, H, bh):
        k1, v1 = _with_column(k[b, hs], 1), _with_column(v[b, hs], 1)   # (h, N, Dh + 1)
        q1 = [_with_column(q[b, hs, s] * (scale * LOG2E), -lse2[b, hs, s])
              for s in q_spans]                           # [qs | -L2] (h, bq, Dh + 1) each
        do1 = [_with_column(do[b, hs, s], -delta[b, hs, s]) for s in q_spans]   # [dO | -D]
        for j, ks in enumerate(_spans(N, bk)):
            for i, qs in enumerate(q_spans):
                first = (i == 0, j == 0)                  # the first term of dk, dv / of dq
                _block_grads(q1[i], k1[:, ks], v1[:, ks], do1[i], dq[b, hs, qs],
                             dk[b, hs, ks], dv[b, hs, ks], buf, first)
    dq *= scale
    dk *= LN2                                             # its sum read q log2(e) / sqrt(Dh)
    return dqkv.reshape(B, N, 3 * H * Dh)                 # (B, N, 3D)


def _block_grads(q1, k1, v1, do1, dqi, dkj, dvj, buf, first: tuple) -> None:
    """One (query block i, key block j) term of dq_i, dk_j and dv_j of h heads (written, or
    added unless this is the first term), each row's shift riding in its product (8.5, step 8):
    q1 = [qi | -L2_i] (h, bq, Dh + 1) with qi scaled by log2(e) / sqrt(Dh), k1 = [kj | 1] and
    v1 = [vj | 1] (h, bk, Dh + 1), do1 = [dO_i | -D_i] (h, bq, Dh + 1). dqi gets dS k (its
    1/sqrt(Dh) after all blocks); dkj gets dS^T qi (its ln 2 after all blocks)."""
    xp = backend.xp_of(q1)
    h, nq, Dh1 = q1.shape
    nk = k1.shape[1]
    qi, kj, doi = q1[..., :Dh1 - 1], k1[..., :Dh1 - 1], do1[..., :Dh1 - 1]   # views
    pt = _scratch(buf[0], nk, h, nq)                      # P^T, keys first
    xp.matmul(k1, q1.swapaxes(-1, -2), out=pt.transpose(1, 0, 2))   # (S2 - L2)^T
    xp.exp2(pt, out=pt)                                   # P^T = 2^(S2 - L2)^T
    dst = _scratch(buf[1], nk, h, nq)                     # dP^T - D, then dS^T
    xp.matmul(v1, do1.swapaxes(-1, -2), out=dst.transpose(1, 0, 2))  # (v dO^T - D)^T
    dst *= pt                                             # dS^T = P^T (dP^T - D)
    _put(dvj, pt.transpose(1, 0, 2), doi, first[0])       # dv += P^T dO
    _put(dkj, dst.transpose(1, 0, 2), qi, first[0])       # dk += dS^T q
    _put(dqi, dst.transpose(1, 2, 0), kj, first[1])       # dq += dS k


def _put(target, a, b, first: bool) -> None:
    """target = a @ b on the first term, target += a @ b after it."""
    xp = backend.xp_of(a)
    if first:
        xp.matmul(a, b, out=target)
    else:
        target += a @ b
