"""minivit/kernels/streamed.py (attention over blocks of queries and keys, online softmax, the
backward from the saved log-sum-exp) against layers/attention.py's pair: gradients by central
differences, outputs, maps and gradients equal to the reference in float64 and to float32
rounding in float32, for block sizes that divide N and that do not; kernels.plan()'s rule; the
whole model with the streamed path forced on equal to the reference engine."""
import functools
import warnings

import numpy as np
import pytest

from minivit import ViT, ViTConfig, kernels
from minivit.gradcheck import check_grads
from minivit.kernels import block as fast_block
from minivit.kernels import streamed
from minivit.layers import BatchRows, cross_entropy_backward, cross_entropy_forward
from minivit.layers import attention as reference
from minivit.parallel.threads import Runtime

from conftest import randn, randomize_params
from kernel_testing import TOL, assert_close, kernels_on  # noqa: F401 (a fixture)

B, N, H, Dh = 2, 5, 2, 3                  # small: every coordinate of q, k, v is checked
BLOCKS = [(None, None, None), (1, 3, 2), (2, 2, 3), (1, 4, 5), (1, 1, 1),
          (2, 5, 5)]                      # (block_h, block_q, block_k): heads, queries, keys
RTOL64 = 1e-12
RTOL32 = 5e-6          # float32: tens of roundings of 6e-8 (the reference pair run in float32
                       # is off by as much)


def split_qkv(qkv):
    """q, k, v (B, N, D) each of a fused qkv (B, N, 3D)."""
    return tuple(np.ascontiguousarray(a) for a in np.split(qkv, 3, axis=-1))


def forward_qkv(q, k, v, **kw):
    return streamed.attention_forward(np.concatenate([q, k, v], -1), H, **kw)


@pytest.mark.parametrize("block_h, block_q, block_k", BLOCKS[:4])
def test_streamed_grads_q_k_v(block_h, block_q, block_k):
    """Central differences in float64 of sum(out * dout) in q, k and v, batch 2, 2 heads."""
    q, k, v = split_qkv(randn(np, B, N, 3 * H * Dh, scale=1.5))
    dout = randn(np, B, N, H * Dh, seed=3)
    fwd = functools.partial(forward_qkv, block_q=block_q, block_k=block_k, block_h=block_h)
    _, cache = fwd(q, k, v)
    grads = np.split(streamed.attention_backward(dout, cache), 3, axis=-1)
    errs = check_grads(lambda: float((fwd(q, k, v)[0] * dout).sum()), (q, k, v), grads,
                       ["q", "k", "v"], tol=TOL)
    assert set(errs) == {"q", "k", "v"} and max(errs.values()) <= TOL


@pytest.mark.parametrize("queries", [1, slice(2, 4)])
def test_streamed_grads_some_query_rows(queries):
    q, k, v = split_qkv(randn(np, B, N, 3 * H * Dh, seed=5))
    fwd = functools.partial(forward_qkv, queries=queries, block_q=2, block_k=3, block_h=1)
    out, cache = fwd(q, k, v)
    dout = randn(np, *out.shape, seed=6)
    grads = np.split(streamed.attention_backward(dout, cache), 3, axis=-1)
    check_grads(lambda: float((fwd(q, k, v)[0] * dout).sum()), (q, k, v), grads,
                ["q", "k", "v"], tol=TOL)


@pytest.fixture(params=["own score", "running max"])
def shift(request, monkeypatch):
    """Each row's shift: its own score (the default), or the running max everywhere (the path
    a query block takes when its sums leave float range)."""
    if request.param == "running max":
        monkeypatch.setattr(streamed, "_query_block_own_shift", lambda *args: None)
    return request.param


@pytest.mark.parametrize("dtype, rtol", [("float64", RTOL64), ("float32", RTOL32)])
@pytest.mark.parametrize("block_h, block_q, block_k", BLOCKS)
@pytest.mark.parametrize("queries", [None, 1, slice(1, 4)])
def test_streamed_equals_reference(dtype, rtol, block_h, block_q, block_k, queries, shift):
    """Output, maps (remade from the log-sum-exp) and dqkv equal the reference pair's rows
    (the float64 reference on the same inputs: float32 within its rounding), in the input's
    dtype, whichever shift the forward takes; the cache holds nothing N x N."""
    qkv = randn(np, B, N, 3 * H * Dh, seed=1, scale=2.0)
    dout = randn(np, B, N, H * Dh, seed=2)
    out_ref, c_ref = reference.attention_forward(qkv, H)
    rows = slice(*(queries if isinstance(queries, slice) else slice(0, queries)).indices(N))
    d = np.zeros_like(dout)
    d[:, rows] = dout[:, rows]
    dqkv_ref = reference.attention_backward(d, c_ref)
    out, c = streamed.attention_forward(qkv.astype(dtype), H, queries=queries, block_q=block_q,
                                        block_k=block_k, block_h=block_h)
    dqkv = streamed.attention_backward(dout[:, rows].astype(dtype), c)
    assert out.dtype == dqkv.dtype == c.lse2.dtype == np.dtype(dtype)
    assert c.lse2.shape == (B, H, rows.stop - rows.start) and np.shares_memory(c.out, out)
    assert_close(out, out_ref[:, rows], rtol, "out")
    scores = (c_ref.q @ c_ref.k.swapaxes(-1, -2))[:, :, rows] * c_ref.scale   # (B, H, Q, N)
    top = scores.max(-1)
    lse = top + np.log(np.exp(scores - top[..., None]).sum(-1))        # log sum_j e^S_ij
    assert_close(c.lse2 * streamed.LN2, lse, rtol, "lse2 ln 2")        # L2 = L / ln 2
    assert_close(c.maps(), c_ref.probs[:, :, rows], rtol, "maps")
    assert_close(dqkv, dqkv_ref, rtol, "dqkv")
    if queries is not None:                               # dq is zero outside the rows
        dq = dqkv.reshape(B, N, 3, -1)[:, :, 0]
        assert not dq[:, :rows.start].any() and not dq[:, rows.stop:].any()


def test_streamed_large_scores_and_many_blocks():
    """Scores of hundreds (exp would overflow without the running max) across 1-key blocks:
    the running rescaling keeps them finite and exact."""
    qkv = randn(np, 1, 9, 3 * 2 * 4, seed=8, scale=12.0)
    out_ref, c_ref = reference.attention_forward(qkv, 2)
    assert np.abs(c_ref.q @ c_ref.k.swapaxes(-1, -2)).max() * c_ref.scale > 100
    out, c = streamed.attention_forward(qkv, 2, block_q=4, block_k=1)
    assert np.isfinite(c.lse2).all()
    assert_close(out, out_ref, RTOL64, "out")
    dout = randn(np, 1, 9, 8, seed=9)
    assert_close(streamed.attention_backward(dout, c), reference.attention_backward(dout, c_ref),
                 RTOL64, "dqkv")


def scores_past_float32(dtype):
    """qkv (1, 6, 3 * 2 * 4) whose query 2 of head 0 scores key 4 above its own key by 400,
    577 in base 2 (2^577 overflows float32, not float64); every other row is ordinary."""
    qkv = randn(np, 1, 6, 3 * 2 * 4, seed=13).astype(dtype)
    q, k = qkv[0, :, :4], qkv[0, :, 8:12]                 # head 0's q and k (6, 4) views
    q[2], k[2], k[4] = 10.0, -10.0, 10.0                  # S_22 = -200, S_24 = +200
    return qkv


def test_streamed_rows_past_float_range_take_the_running_max(monkeypatch):
    """float32, a score above its row's own by more than float range: the own-score sums
    overflow (no warning), the check sees it, and that query block runs again with the running
    max: the same bits as the running max everywhere, and the reference's output to float32
    rounding. In float64 (no overflow) the own-score path serves the same row."""
    calls = []
    running = streamed._query_block
    monkeypatch.setattr(streamed, "_query_block",
                        lambda *args: calls.append(1) or running(*args))
    qkv = scores_past_float32("float32")
    out, c = streamed.attention_forward(qkv, 2, block_h=1, block_q=3, block_k=4)
    assert calls == [1]                                   # head 0, queries 0-2 only
    assert np.isfinite(out).all() and np.isfinite(c.lse2).all()
    with warnings.catch_warnings():                       # the overflow raised no warning
        warnings.simplefilter("error")
        streamed.attention_forward(qkv, 2, block_h=1, block_q=3, block_k=4)
    with monkeypatch.context() as m:
        m.setattr(streamed, "_query_block_own_shift", lambda *args: None)
        out_running, c_running = streamed.attention_forward(qkv, 2, block_h=1, block_q=3,
                                                            block_k=4)
    np.testing.assert_array_equal(out[0, :3, :4], out_running[0, :3, :4])   # the block again
    np.testing.assert_array_equal(c.lse2[0, 0, :3], c_running.lse2[0, 0, :3])
    out_ref, _ = reference.attention_forward(qkv.astype(np.float64), 2)
    assert_close(out, out_ref, RTOL32, "out")
    calls.clear()
    qkv64 = scores_past_float32("float64")
    out64, _ = streamed.attention_forward(qkv64, 2, block_h=1, block_q=3, block_k=4)
    assert calls == []
    assert_close(out64, reference.attention_forward(qkv64, 2)[0], RTOL64, "out float64")


@pytest.mark.parametrize("block_h", [1, 2, 3])
def test_streamed_head_tiles_that_do_not_divide_the_heads(block_h):
    """3 heads in tiles of 1, 2 (a last tile of one head) and 3: the same output and dqkv as
    the reference pair."""
    qkv = randn(np, B, 7, 3 * 3 * 2, seed=11, scale=2.0)
    dout = randn(np, B, 7, 3 * 2, seed=12)
    out_ref, c_ref = reference.attention_forward(qkv, 3)
    out, c = streamed.attention_forward(qkv, 3, block_h=block_h, block_q=3, block_k=4)
    assert c.blocks == (block_h, 3, 4)
    assert_close(out, out_ref, RTOL64, "out")
    assert_close(streamed.attention_backward(dout, c), reference.attention_backward(dout, c_ref),
                 RTOL64, "dqkv")


def test_block_sizes_bound_the_tile():
    """Defaults: blocks of equal size covering each axis; one head's (bq, bk) float32 scores
    within TILE_BYTES unless that would make bq thinner than MIN_BLOCK_Q allows, and as many
    heads per tile as then fit."""
    assert streamed.block_sizes(12, 197, 197, 4) == (12, 197, 197)      # one tile
    bh, bq, bk = streamed.block_sizes(12, 257, 257, 4)
    assert (bq, bk) == (257, 257) and bh * bq * bk * 4 <= streamed.TILE_BYTES
    assert streamed.block_sizes(12, 3000, 3000, 4)[2] == 1000            # 3 x 1000, not 1024 +
    for heads in (6, 12, 16):
        for n in (577, 1025, 1370, 4097):
            bh, bq, bk = streamed.block_sizes(heads, n, n, 4)
            assert bk <= streamed.BLOCK_K and bq <= n and 1 <= bh <= heads
            assert (bh * bq * bk * 4 <= streamed.TILE_BYTES
                    or (bh == 1 and bq <= streamed.MIN_BLOCK_Q))
    with pytest.raises(ValueError, match="block sizes"):
        streamed.attention_forward(randn(np, 1, 3, 6), 1, block_q=-1)
    with pytest.raises(ValueError, match="block_h=-2"):
        streamed.attention_forward(randn(np, 1, 3, 6), 1, block_h=-2)


def test_streamed_has_no_attention_dropout():
    """A training forward with attention dropout is refused; without a mask source
    (inference) the rate is moot."""
    qkv = randn(np, B, N, 3 * H * Dh)
    with pytest.raises(ValueError, match="attention dropout"):
        streamed.attention_forward(qkv, H, 0.1, BatchRows(0, 0, B, B))
    out, _ = streamed.attention_forward(qkv, H, 0.1, None)
    assert_close(out, reference.attention_forward(qkv, H)[0], RTOL64, "out")


# ---- the plan and the whole model --------------------------------------------------------------
CFG = dict(image_size=8, patch_size=2, in_channels=2, num_classes=3, dim=12, depth=2, heads=3,
           mlp_ratio=1.5, dtype="float64")            # 17 tokens
RUNTIME = Runtime()                                   # plan()'s split: the default a model gets


@pytest.fixture
def streamed_always(monkeypatch, kernels_on):
    """Kernels on, the streamed path from one token on."""
    monkeypatch.setattr(kernels, "STREAMED_MIN_TOKENS", 0)


def _plan(*args, **mode):
    """kernels.plan on RUNTIME (its split is not what these tests look at)."""
    return kernels.plan(*args, runtime=RUNTIME, **mode)


def _streams(block) -> bool:
    return isinstance(block, functools.partial) and block.keywords.get("streamed") is True


def test_plan_picks_streamed_by_the_rule(streamed_always, monkeypatch):
    cfg = ViTConfig(**CFG)
    for train in (False, True):
        for maps in (False, True):
            p = _plan(cfg, 2, np, train=train, maps=maps)
            assert _streams(p.block_forward) and _streams(p.last_block_forward)
            assert p.block_backward is fast_block.block_backward
    dropped = ViTConfig(**{**CFG, "attn_dropout": 0.1})
    assert not _streams(_plan(dropped, 2, np, train=True, maps=False).block_forward)
    assert _streams(_plan(dropped, 2, np, train=False, maps=False).block_forward)
    assert not _streams(_plan(cfg, 2, object(), train=False, maps=False).block_forward)
    monkeypatch.setattr(kernels, "STREAMED_MIN_TOKENS", cfg.num_tokens + 1)
    for train in (False, True):
        assert not _streams(_plan(cfg, 2, np, train=train, maps=False).block_forward)
    monkeypatch.setattr(kernels, "STREAMED_MIN_TOKENS", cfg.num_tokens)
    for train in (False, True):
        assert _streams(_plan(cfg, 1, np, train=train, maps=False).block_forward)


def test_plan_defaults_stream_long_sequences(kernels_on):
    """The threshold: ViT-B/16 at 224 (197 tokens) keeps the keys-first kernel even where a large
    batch keeps much, at 384 (577 tokens) and 448 (785 tokens) its inference and its training
    step stream at every batch, never with attention dropout; CuPy never streams."""
    from minivit.config import model_config
    b224, b448 = model_config("vit-b16"), model_config("vit-b16", image_size=448)
    assert not _streams(_plan(b224, 4, np, train=False, maps=False).block_forward)
    assert not _streams(_plan(b224, 64, np, train=True, maps=False).block_forward)
    assert _streams(_plan(b448, 4, np, train=False, maps=False).block_forward)
    assert _streams(_plan(b448, 64, np, train=True, maps=False).block_forward)
    assert _streams(_plan(b448, 1, np, train=True, maps=False).block_forward)
    b384 = model_config("vit-b16", image_size=384)
    assert _streams(_plan(b384, 1, np, train=True, maps=False).block_forward)
    below = model_config("vit-b16", image_size=368)                  # 530 tokens
    assert not _streams(_plan(below, 1, np, train=True, maps=False).block_forward)
    dropped = model_config("vit-b16", image_size=448, attn_dropout=0.1)
    assert not _streams(_plan(dropped, 64, np, train=True, maps=False).block_forward)
    assert not _streams(_plan(b448, 4, object(), train=False, maps=False).block_forward)


def _run(model, x, labels, train: bool, maps: bool = False):
    """Logits (and maps), and after a training forward dx and a copy of the grads."""
    masks = BatchRows(11, 0, x.shape[0], x.shape[0]) if train else None
    out = model.forward(x, train=train, return_attention=maps, masks=masks)
    if not train:
        return out, None, None
    _, cache = cross_entropy_forward(out, labels, 0.1)
    dx = model.backward(cross_entropy_backward(cache))
    return out, dx, {k: v.copy() for k, v in model.grads.items()}


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_model_streamed_equals_reference(streamed_always, pool):
    """A small ViT (17 tokens, float64) with every block's attention streamed gives the
    reference engine's logits, maps, dx and every gradient to 1e-12, in inference and in
    training (dropout and drop path on, attention dropout off: the same masks)."""
    cfg = ViTConfig(**CFG, pool=pool, dropout=0.1, drop_path=0.2)
    model = ViT(cfg, seed=0)
    randomize_params(model)
    x = randn(np, 3, 2, 8, 8, seed=4)
    labels = np.arange(3) % 3
    fast = _run(model, x, labels, True)
    caches = [c.attn.core for c in model_blocks_of_last_step(model, x, labels)]
    assert all(isinstance(c, streamed.StreamedCache) for c in caches)
    with kernels.disabled():
        ref = _run(model, x, labels, True)
    assert_close(fast[0], ref[0], RTOL64, "logits")
    assert_close(fast[1], ref[1], RTOL64, "dx")
    for k in ref[2]:
        assert_close(fast[2][k], ref[2][k], RTOL64, k)
    (logits, maps), _, _ = _run(model, x, labels, False, maps=True)
    with kernels.disabled():
        (logits_ref, maps_ref), _, _ = _run(model, x, labels, False, maps=True)
    assert_close(logits, logits_ref, RTOL64, "inference logits")
    for i, (m, m_ref) in enumerate(zip(maps, maps_ref)):
        assert_close(m, m_ref, RTOL64, f"maps {i}")


def model_blocks_of_last_step(model, x, labels) -> list:
    """The block caches a training forward keeps (the first piece's)."""
    model.forward(x, train=True, masks=BatchRows(11, 0, x.shape[0], x.shape[0]))
    caches = model._saved[2][0].blocks
    model._saved = None
    return caches


def test_model_with_attention_dropout_is_not_streamed(streamed_always):
    cfg = ViTConfig(**CFG, attn_dropout=0.2)
    model = ViT(cfg, seed=0)
    x = randn(np, 2, 2, 8, 8, seed=4)
    caches = model_blocks_of_last_step(model, x, np.arange(2))
    assert not any(isinstance(c.attn.core, streamed.StreamedCache) for c in caches)
    assert _streams(_plan(cfg, 2, np, train=False, maps=False).block_forward)
