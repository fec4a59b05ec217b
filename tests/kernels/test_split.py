"""The work split over worker threads, with the kernels on (the default): a batch split into
pieces by images (the `chunked` fixture forces it for tiny batches), and a small batch's tokens
split for inference (minivit/kernels/split.py), each against one pass."""
import numpy as np
import pytest

from minivit import ViT, ViTConfig, kernels
from minivit.kernels import block as fast
from minivit.kernels.split import _part_queries, token_split_block_forward
from minivit.layers import BatchRows
from minivit.layers import block as reference
from minivit.parallel import threads

from conftest import randn
from kernel_testing import assert_close, block_params, kernels_on  # noqa: F401 (a fixture)

from test_model import SMALL, randomize  # noqa: E402  (the model tests' helpers)


pytestmark = pytest.mark.usefixtures("kernels_on")     # every test with the kernels on


# ---- the batch split by images -------------------------------------------------------------

@pytest.fixture
def chunked(monkeypatch):
    """A runtime of two workers that splits the NumPy batch even for tiny batches (no smallest
    piece): the tests give it to their model."""
    monkeypatch.setattr(threads, "MIN_PIECE", 1)
    return threads.Runtime(workers=2)


def test_chunked_equals_whole_batch(chunked):
    if chunked.worker_count() < 2:
        pytest.skip("per-thread BLAS control unavailable: the batch is never split")
    cfg = ViTConfig(**SMALL, pool="mean")
    x, dl = randn(np, 5, 2, 8, 8), randn(np, 5, 3, seed=2)
    m = ViT(cfg, runtime=chunked)
    randomize(m)
    assert len(chunked.split_batch(5)) == 2
    logits, attn = m.forward(x, train=True, return_attention=True)
    dx = m.backward(dl)
    grads = {k: v.copy() for k, v in m.grads.items()}
    m.runtime = threads.Runtime(workers=1)
    logits1, attn1 = m.forward(x, train=True, return_attention=True)
    dx1 = m.backward(dl)
    np.testing.assert_allclose(logits, logits1, rtol=1e-13)
    np.testing.assert_allclose(attn[1], attn1[1], rtol=1e-13)
    np.testing.assert_allclose(dx, dx1, rtol=1e-12, atol=1e-15)
    for k in grads:
        np.testing.assert_allclose(grads[k], m.grads[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_chunked_with_dropout_equals_one_piece(chunked):
    """With dropout, attention dropout and drop path on, the batch split over two workers gives
    the one-piece pass's logits, dx and every gradient (the same masks: each piece draws its
    rows of the batch's masks), so the one-piece gradchecks (test_model.py) cover it."""
    if chunked.worker_count() < 2:
        pytest.skip("per-thread BLAS control unavailable: the batch is never split")
    cfg = ViTConfig(**SMALL, dropout=0.2, attn_dropout=0.1, drop_path=0.2)
    x, dl = randn(np, 4, 2, 8, 8), randn(np, 4, 3, seed=2)
    m = ViT(cfg)
    randomize(m)
    runs = []
    for workers in (2, 1):
        m.runtime = threads.Runtime(workers=workers)
        assert len(m.runtime.split_batch(4)) == workers
        m.rng = np.random.default_rng(3)                  # the same mask seed both times
        logits = m.forward(x, train=True)
        dx = m.backward(dl)
        runs.append((logits, dx, {k: v.copy() for k, v in m.grads.items()}))
    (l2, dx2, g2), (l1, dx1, g1) = runs
    np.testing.assert_allclose(l2, l1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx2, dx1, rtol=1e-12, atol=1e-15)
    for k in g1:          # atol: the key bias's gradient is zero up to rounding (softmax)
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-12, atol=1e-13, err_msg=k)


# ---- a small batch's tokens split, for inference -------------------------------------------

@pytest.mark.parametrize("variant", [dict(pool="cls"), dict(pool="mean"),
                                     dict(distilled=True, num_registers=2),
                                     dict(layer_scale=0.1, gelu="erf"),
                                     dict(streamed=True)])
def test_token_split_inference_equals_one_pass(monkeypatch, variant):
    """A batch too small to split by images runs its tokens in pieces on the worker threads
    (inference only): the same logits as one pass, for CLS pooling (the last block's CLS row
    alone), mean pooling, two class tokens with registers, LayerScale, and attention streamed
    (the plan's choice from STREAMED_MIN_TOKENS tokens, lowered here)."""
    if threads.blas_threads() is None:
        pytest.skip("per-thread BLAS control unavailable: nothing is split")
    monkeypatch.setattr(threads, "MIN_TOKEN_PIECE", 1)
    variant = dict(variant)
    if variant.pop("streamed", False):
        monkeypatch.setattr(kernels, "STREAMED_MIN_TOKENS", 1)
    cfg = ViTConfig(**{**SMALL, "depth": 3}, **variant)
    m = ViT(cfg, seed=3)
    randomize(m)
    x = randn(np, 1, 2, 8, 8)
    m.runtime = threads.Runtime(workers=3)
    calls = []
    real = threads.Runtime.parallel_map
    monkeypatch.setattr(threads.Runtime, "parallel_map", lambda self, fn, items:
                        calls.append(len(items)) or real(self, fn, items))
    split = m.forward(x)
    assert 3 in calls                                     # the tokens did go to three workers
    m.runtime = threads.Runtime(workers=1)
    whole = m.forward(x)
    np.testing.assert_allclose(split, whole, rtol=1e-13, atol=1e-15)
    assert not np.array_equal(whole, m.forward(x[:, ::-1].copy()))   # the input matters


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("queries", [None, 1, 2, 4])
@pytest.mark.parametrize("parts", [[slice(0, 2), slice(2, 5)],
                                   [slice(0, 1), slice(1, 3), slice(3, 5)]])
def test_token_split_block_equals_one_pass(parts, queries, streamed):
    """token_split_block_forward over token parts, keys-first or streamed attention: the fast
    block's output in one pass (its first `queries` rows), and the reference block's rows; no
    cache, no masks."""
    B, N, D, F = 2, 5, 6, 9
    cfg = ViTConfig(dim=D, heads=2, gelu="erf", layer_scale=0.1)
    p, x = block_params(np, cfg, D, F), randn(np, B, N, D)
    y, cache = token_split_block_forward(x, p, cfg, parts=parts, runtime=threads.Runtime(),
                                         queries=queries, streamed=streamed)
    assert cache is None and y.shape == (B, queries or N, D)
    rows = slice(0, queries or N)
    one = fast.block_forward(x, p, cfg, queries=queries, streamed=streamed)[0]
    assert_close(y, one, 1e-13, "one pass")
    assert_close(y, reference.block_forward(x, p, cfg)[0][:, rows], 1e-12, "reference")


def test_token_split_takes_no_masks():
    cfg = ViTConfig(dim=6, heads=2)
    p, x = block_params(np, cfg, 6, 9), randn(np, 2, 5, 6)
    with pytest.raises(ValueError, match="inference"):
        token_split_block_forward(x, p, cfg, parts=[slice(0, 5)], runtime=threads.Runtime(),
                                  rng=BatchRows(0, 0, 2, 2))


def test_part_queries():
    """How many leading rows of a token part need their q when only the first Q tokens do."""
    assert _part_queries(None, slice(2, 5)) is None
    assert [_part_queries(3, r) for r in (slice(0, 2), slice(2, 5), slice(5, 9))] == [2, 1, 0]
