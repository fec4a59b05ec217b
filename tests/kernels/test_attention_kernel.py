"""minivit/kernels/attention.py (NumPy: scores stored keys first, softmax down axis 0) against
layers/attention.py's pairs (queries first, softmax over the last axis): outputs, probabilities,
dropout masks and gradients, for every query row or the first few."""
import numpy as np
import pytest

from minivit import backend
from minivit.kernels import attention as fast
from minivit.layers import BatchRows
from minivit.layers import attention as reference

from conftest import randn
from kernel_testing import assert_close, check_pair

RTOL = 1e-13    # float64: the kernel scales q before q k^T (the reference after) and its BLAS
                # products read strided views: the same sums, rounded in another order


def test_softmax_keys_first(xp):
    """Down the first axis (keys first): gradients, columns summing to 1, huge scores."""
    s = randn(xp, 5, 2, 3, 4, scale=2.0)
    check_pair(fast.softmax_forward, fast.softmax_backward, (s,), randn(xp, 5, 2, 3, 4, seed=3),
               ["s"])
    p, _ = fast.softmax_forward(s)
    np.testing.assert_allclose(backend.to_numpy(p.sum(0)), np.ones((2, 3, 4)), rtol=1e-14)
    p, _ = fast.softmax_forward(xp.asarray([[1000.0], [0.0], [-1000.0]]))   # stable for huge scores
    np.testing.assert_allclose(backend.to_numpy(p), [[1.0], [0.0], [0.0]])


def test_softmax_keys_first_equals_reference():
    """The reference's softmax over the last axis of s (B, H, Q, N), on s stored keys first."""
    s, dp = randn(np, 2, 3, 4, 6, scale=3.0), randn(np, 2, 3, 4, 6, seed=1)
    p_ref, _ = reference.softmax_forward(s)
    st = np.ascontiguousarray(s.transpose(3, 0, 1, 2))    # (N, B, H, Q)
    p, _ = fast.softmax_forward(st)
    assert_close(p.transpose(1, 2, 3, 0), p_ref, 1e-15, "p")
    ds = fast.softmax_backward(np.ascontiguousarray(dp.transpose(3, 0, 1, 2)), p)
    assert_close(ds.transpose(1, 2, 3, 0), reference.softmax_backward(dp, p_ref), 1e-14, "ds")


def test_softmax_overwrite_is_the_same_in_place(xp):
    s = randn(xp, 5, 2, 3, 4, scale=3.0)
    p1, _ = fast.softmax_forward(s)
    s2 = s.copy()
    p2, _ = fast.softmax_forward(s2, overwrite=True)
    np.testing.assert_array_equal(backend.to_numpy(p2), backend.to_numpy(p1))
    if xp is np:                                          # written over the scores
        assert np.shares_memory(p2, s2)
        np.testing.assert_array_equal(s2, p1)
    np.testing.assert_array_equal(backend.to_numpy(fast.softmax_forward(s)[0]), backend.to_numpy(p1))


def _masks(rate):
    return (lambda: BatchRows(5, 0, 2, 2)) if rate else (lambda: None)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_attention_keys_first_grads(rate):
    B, N, H, Dh = 2, 5, 3, 4
    qkv = randn(np, B, N, 3 * H * Dh)
    rng = _masks(rate)
    check_pair(lambda a: fast.attention_forward(a, H, rate, rng()), fast.attention_backward,
               (qkv,), randn(np, B, N, H * Dh, seed=4), ["qkv"])


@pytest.mark.parametrize("rate", [0.0, 0.3])
@pytest.mark.parametrize("queries", [None, 1, 3, slice(1, 4), slice(0, 5)])
def test_attention_equals_reference(rate, queries):
    """Keys-first attention of the query rows asked for (None: all) is those rows of the
    reference's: output, probabilities (maps(), queries first), the dropout mask (drawn in the
    reference's (B, H, N, N) shape from the same source: identical), and dqkv equal to the
    reference's for a dout that is zero outside those rows."""
    B, N, H, Dh = 2, 5, 3, 4
    qkv, dout = randn(np, B, N, 3 * H * Dh), randn(np, B, N, H * Dh, seed=7)
    rows = slice(0, N) if queries is None else (queries if isinstance(queries, slice)
                                                else slice(0, queries))
    Q = rows.stop - rows.start
    rng = _masks(rate)
    out_ref, c_ref = reference.attention_forward(qkv, H, rate, rng())
    out, c = fast.attention_forward(qkv, H, rate, rng(), queries)
    assert out.shape == (B, Q, H * Dh) and c.probs.shape == (N, B, H, Q)
    assert_close(out, out_ref[:, rows], RTOL, "out")
    maps = c.maps()
    assert maps.shape == (B, H, Q, N) and np.shares_memory(maps, c.probs)
    assert_close(maps, c_ref.probs[:, :, rows], 1e-14, "probs")
    if rate:
        np.testing.assert_array_equal(c.mask.transpose(1, 2, 3, 0), c_ref.mask[:, :, rows])
    else:
        assert c.mask is None and c_ref.mask is None and c.probs_drop is c.probs
    d = np.zeros_like(dout)
    d[:, rows] = dout[:, rows]
    assert_close(fast.attention_backward(dout[:, rows], c), reference.attention_backward(d, c_ref),
                 RTOL, "dqkv")


def test_attention_first_query_only():
    """queries=1 gives exactly the CLS row of full attention, and its gradients check."""
    B, N, H, Dh = 2, 5, 2, 3
    qkv = randn(np, B, N, 3 * H * Dh)
    full, _ = fast.attention_forward(qkv, H)
    first, _ = fast.attention_forward(qkv, H, queries=1)
    assert first.shape == (B, 1, H * Dh)
    np.testing.assert_allclose(first, full[:, :1], rtol=1e-13)
    check_pair(lambda a: fast.attention_forward(a, H, queries=1), fast.attention_backward, (qkv,),
               randn(np, B, 1, H * Dh, seed=16), ["qkv"])


def test_attention_queries_slice_grads():
    B, N, H, Dh = 2, 6, 2, 3
    qkv = randn(np, B, N, 3 * H * Dh)
    fwd = lambda a: fast.attention_forward(a, H, 0.25, BatchRows(3, 0, B, B), slice(2, 5))
    check_pair(fwd, fast.attention_backward, (qkv,), randn(np, B, 3, H * Dh, seed=17), ["qkv"])


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_attention_gpu_form_equals_reference(xp, rate):
    """attention_forward_gpu / attention_backward_gpu (CuPy only: fused softmax) against the
    reference pair on the same array module, the same masks."""
    if xp is np:
        pytest.skip("the fused kernels are CuPy's")
    B, N, H, Dh = 2, 5, 3, 4
    qkv, dout = randn(xp, B, N, 3 * H * Dh), randn(xp, B, N, H * Dh, seed=7)
    out_ref, c_ref = reference.attention_forward(qkv, H, rate, backend.rng(4) if rate else None)
    out, c = fast.attention_forward_gpu(qkv, H, rate, backend.rng(4) if rate else None)
    assert_close(out, out_ref, 1e-12, "out")
    assert_close(c.maps(), c_ref.probs, 1e-12, "probs")
    assert_close(fast.attention_backward_gpu(dout, c), reference.attention_backward(dout, c_ref),
                 1e-12, "dqkv")
