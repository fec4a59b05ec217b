"""minivit/kernels/norm.py and reduce.py: LayerNorm as normalize then an affine that goes onto
the rows or folds into the next linear layer, against layers/norm.py's layernorm pair; the
short-axis sums as matrix-vector products against NumPy's sums."""
import numpy as np
import pytest

from minivit import backend
from minivit.kernels.linear import linear_backward, linear_forward
from minivit.kernels.norm import (affine_into_linear_backward, affine_into_linear_forward,
                                  affine_linear_inputs, fold_affine_backward,
                                  fold_affine_forward, fold_affine_weight, normalize_backward,
                                  normalize_forward)
from minivit.kernels.reduce import col_sum, row_mean, row_sum
from minivit.layers import layernorm_backward, layernorm_forward
from minivit.layers import linear_forward as reference_linear_forward

from conftest import randn
from kernel_testing import assert_close, check_pair

# normalize takes its row means as matrix-vector products, the reference as x.mean(-1): the
# same sums in another order, so equal to rounding (float64: 1e-13 of the array's scale; float32
# after the cancellation of x - mean on rows offset by up to 3 standard deviations: 1e-5).
RTOL = {"float64": 1e-13, "float32": 1e-5}


def _rows(xp, *shape, dtype="float64"):
    x = randn(xp, *shape, scale=3.0) + randn(xp, *shape[:-1], 1, seed=5)   # per-row offsets
    return x.astype(dtype)


def test_normalize(xp):
    x = _rows(xp, 2, 5, 8)
    check_pair(normalize_forward, normalize_backward, (x,), randn(xp, 2, 5, 8, seed=1), ["x"])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_normalize_then_affine_equals_layernorm(xp, dtype):
    """normalize(x) * w + b is layernorm(x, w, b), and normalize_backward(dy * w) is its dx, with
    dw = sum(dy * xhat), db = sum(dy); x of 3 rows and of 2 x 5 x 8."""
    for shape in ((3, 16), (2, 5, 8)):
        D = shape[-1]
        x, dy = _rows(xp, *shape, dtype=dtype), randn(xp, *shape, seed=1).astype(dtype)
        w, b = randn(xp, D, seed=2).astype(dtype), randn(xp, D, seed=3).astype(dtype)
        y_ref, c_ref = layernorm_forward(x, w, b, 1e-6)
        xhat, c = normalize_forward(x, 1e-6)
        assert xhat.dtype == np.dtype(dtype)
        assert_close(xhat * w + b, y_ref, RTOL[dtype], "y")
        dx_ref, dw_ref, db_ref = layernorm_backward(dy, c_ref)
        assert_close(normalize_backward(dy * w, c), dx_ref, RTOL[dtype], "dx")
        assert_close((dy * xhat).reshape(-1, D).sum(0), dw_ref, RTOL[dtype], "dw")


def test_fold_affine(xp):
    """LayerNorm then linear equals normalize then the folded linear, and the fold's
    backward gives the LayerNorm and linear grads (checked through the composite)."""
    x, w, b = randn(xp, 2, 5, 8, scale=3.0), randn(xp, 8, seed=1), randn(xp, 8, seed=2)
    W, c, dz = randn(xp, 8, 6, seed=3), randn(xp, 6, seed=4), randn(xp, 2, 5, 6, seed=5)

    def folded(x_, w_, b_, W_, c_):
        h, c_norm = normalize_forward(x_)
        (W2, c2), c_fold = fold_affine_forward(w_, b_, W_, c_)
        z, c_lin = linear_forward(h, W2, c2)
        return z, (c_norm, c_fold, c_lin)

    def folded_backward(dz_, cache):
        c_norm, c_fold, c_lin = cache
        dh, dW2, dc2 = linear_backward(dz_, c_lin)
        return (normalize_backward(dh, c_norm),) + fold_affine_backward(dW2, dc2, c_fold)

    plain = reference_linear_forward(layernorm_forward(x, w, b)[0], W, c)[0]
    np.testing.assert_allclose(backend.to_numpy(folded(x, w, b, W, c)[0]), backend.to_numpy(plain),
                               rtol=1e-12, atol=1e-13)
    (W2, _), c_fold = fold_affine_forward(w, b, W, c)
    np.testing.assert_array_equal(backend.to_numpy(fold_affine_weight(c_fold)), backend.to_numpy(W2))
    check_pair(folded, folded_backward, (x, w, b, W, c), dz, ["x", "w", "b", "W", "c"])


@pytest.mark.parametrize("rows,F,fold", [(10, 6, None), (10, 16, None), (10, 6, False),
                                         (10, 16, True)])
def test_affine_into_linear(xp, rows, F, fold):
    """LayerNorm then linear through affine_into_linear_*, by either route (folded when rows >= F
    unless forced): the LayerNorm-then-linear function and its gradients, and the linear's
    input and weight remade from the cache with the forward's bits."""
    x, w, b = randn(xp, 2, rows // 2, 8, scale=3.0), randn(xp, 8, seed=1), randn(xp, 8, seed=2)
    W, c, dz = randn(xp, 8, F, seed=3), randn(xp, F, seed=4), randn(xp, 2, rows // 2, F, seed=5)

    def fwd(x_, w_, b_, W_, c_):
        xhat, c_norm = normalize_forward(x_)
        h, W2, c2, c_aff = affine_into_linear_forward(xhat, w_, b_, W_, c_, fold)
        z, c_lin = linear_forward(h, W2, c2)
        return z, (xhat, c_norm, c_aff, c_lin)

    def bwd(dz_, cache):
        xhat, c_norm, c_aff, c_lin = cache
        dh, dW2, dc2 = linear_backward(dz_, c_lin)
        dxhat, *grads = affine_into_linear_backward(dh, dW2, dc2, xhat, c_aff)
        return (normalize_backward(dxhat, c_norm), *grads)

    z, (xhat, _, c_aff, c_lin) = fwd(x, w, b, W, c)
    assert c_aff.folded == (rows >= F if fold is None else fold)
    h, W2 = affine_linear_inputs(xhat, c_aff)
    np.testing.assert_array_equal(backend.to_numpy(h.reshape(-1, 8)), backend.to_numpy(c_lin[0]))
    np.testing.assert_array_equal(backend.to_numpy(W2), backend.to_numpy(c_lin[1]))
    plain = reference_linear_forward(layernorm_forward(x, w, b)[0], W, c)[0]
    np.testing.assert_allclose(backend.to_numpy(z), backend.to_numpy(plain), rtol=1e-12, atol=1e-13)
    check_pair(fwd, bwd, (x, w, b, W, c), dz, ["x", "w", "b", "W", "c"])


def test_reductions(xp):
    """row_sum, row_mean and col_sum: NumPy's sums, in shapes that broadcast against the input."""
    x = randn(xp, 3, 4, 7)
    assert_close(row_sum(x), x.sum(-1, keepdims=True), 1e-15, "row_sum")
    assert_close(row_sum(x, 0.5), 0.5 * x.sum(-1, keepdims=True), 1e-15, "row_sum scaled")
    assert_close(row_mean(x), x.mean(-1, keepdims=True), 1e-15, "row_mean")
    assert_close(col_sum(x.reshape(12, 7)), x.reshape(12, 7).sum(0), 1e-15, "col_sum")
    assert row_sum(x).shape == (3, 4, 1) and col_sum(x.reshape(12, 7)).shape == (7,)
    x32 = x.astype("float32")
    assert row_mean(x32).dtype == np.float32 and col_sum(x32.reshape(12, 7)).dtype == np.float32
