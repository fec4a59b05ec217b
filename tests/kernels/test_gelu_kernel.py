"""minivit/kernels/gelu.py against layers/activations.py: the tanh GELU through exp (chunks,
s remade above KEEP_S_MAX), the erf GELU with NumPy's float32 normal CDF, and their gradients."""
import math

import numpy as np
import pytest

from minivit import ViTConfig, backend
from minivit.gradcheck import check_grads
from minivit.kernels import block as fast_block
from minivit.kernels import gelu
from minivit.kernels.gelu import (GELU, gelu_erf_backward, gelu_erf_forward, gelu_output,
                                  gelu_remake, gelu_tanh_backward, gelu_tanh_forward,
                                  normal_cdf, normal_cdf_float32)
from minivit.layers import activations as reference

from conftest import randn
from kernel_testing import TOL, block_params, check_pair

EPS = {"float64": np.finfo(np.float64).eps, "float32": np.finfo(np.float32).eps}


def _x(dtype, seed=0):
    r = np.random.default_rng(seed)
    return np.concatenate([np.linspace(-12, 12, 4001), r.standard_normal(4000) * 3]).astype(dtype)


# ---- the pairs' own gradients --------------------------------------------------------------

@pytest.mark.parametrize("name", ["tanh", "erf"])
def test_gelu_kernel_grads(xp, name):
    fwd, bwd = GELU[name]
    x = randn(xp, 2, 3, 10, scale=2.0)
    check_pair(fwd, bwd, (x,), randn(xp, 2, 3, 10, seed=2), ["x"])


# ---- equal to the reference ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gelu_tanh_equals_reference(dtype):
    """The sigmoid form x / (1 + exp(-2u)) against the reference's 0.5 x (1 + tanh u). The
    reference loses relative accuracy where 1 + tanh u cancels (x below about -1), so the bound
    is in units of eps |x|: |dy| <= 4 eps |x| everywhere, and rtol 8 eps where |y| >= |x| / 10
    (float64: 1.8e-15; float32: 8 ulps). The derivative: |ddx| <= 4 eps |dy| max(1, x^2)."""
    eps = EPS[dtype]
    x = _x(dtype)
    dy = np.random.default_rng(1).standard_normal(x.size).astype(dtype)
    y_ref, c_ref = reference.gelu_tanh_forward(x)
    y, c = gelu_tanh_forward(x)
    assert y.dtype == np.dtype(dtype) and c[1].dtype == np.dtype(dtype)
    d = np.abs(y.astype(np.float64) - y_ref)
    x64 = np.abs(x.astype(np.float64))
    assert (d <= 4 * eps * x64).all(), (d / (eps * np.maximum(x64, 1e-300))).max()
    big = np.abs(y_ref) >= 0.1 * x64
    np.testing.assert_allclose(y[big], y_ref[big], rtol=8 * eps, atol=0)
    dx, dx_ref = gelu_tanh_backward(dy, c), reference.gelu_tanh_backward(dy, c_ref)
    assert dx.dtype == np.dtype(dtype)
    bound = 4 * eps * np.abs(dy.astype(np.float64)) * np.maximum(1.0, x64 ** 2)
    assert (np.abs(dx.astype(np.float64) - dx_ref) <= bound).all()
    np.testing.assert_allclose(dx[big], dx_ref[big], rtol=1e-13 if dtype == "float64" else 4e-6,
                               atol=16 * eps)


def test_gelu_tanh_remade_s_equals_reference(monkeypatch):
    """Above KEEP_S_MAX (forced to 0) the kernel keeps (x, None): its backward through the remade
    s is the same bits as with s kept, and so equal to the reference's like it."""
    x = _x("float64")[:8000].reshape(10, 800)
    dy = randn(np, *x.shape, seed=3)
    y1, c1 = gelu_tanh_forward(x)
    dx1 = gelu_tanh_backward(dy, c1)
    monkeypatch.setattr(gelu, "KEEP_S_MAX", 0)
    y2, c2 = gelu_tanh_forward(x)
    assert c2[0] is x and c2[1] is None
    np.testing.assert_array_equal(y2, y1)
    np.testing.assert_array_equal(gelu_tanh_backward(dy, c2), dx1)
    x64 = np.abs(x)
    y_ref, c_ref = reference.gelu_tanh_forward(x)
    assert (np.abs(y2 - y_ref) <= 4 * EPS["float64"] * x64).all()
    dx_ref = reference.gelu_tanh_backward(dy, c_ref)
    assert (np.abs(gelu_tanh_backward(dy, c2) - dx_ref)
            <= 4 * EPS["float64"] * np.abs(dy) * np.maximum(1.0, x64 ** 2)).all()


def test_gelu_erf_float64_is_the_reference():
    """In float64 the kernel's erf GELU is the reference's operations: the same bits."""
    x, dy = _x("float64"), randn(np, 8001, seed=4)
    y_ref, c_ref = reference.gelu_erf_forward(x)
    y, c = gelu_erf_forward(x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(c[1], c_ref[1])
    np.testing.assert_array_equal(gelu_erf_backward(dy, c), reference.gelu_erf_backward(dy, c_ref))


def test_gelu_erf_float32_equals_reference_within_the_cdf_bound():
    """float32 on NumPy: the kernel's Phi (normal_cdf_float32, within 1.1e-7 of the exact one)
    against the reference's 0.5 (1 + erf(x / sqrt 2)) in float32 (within 6e-8: the rounding of
    1 + erf): |dPhi| <= 1.7e-7. Then y = x Phi within (1.7e-7 + 2 x 6e-8) |x| (both products
    rounded), dx = dy (Phi + x phi) within (1.7e-7 + 2 x 1.2e-7 x 1.13) |dy| (max |Phi + x phi|
    is 1.13)."""
    x = _x("float32")
    dy = np.random.default_rng(2).standard_normal(x.size).astype(np.float32)
    y_ref, c_ref = reference.gelu_erf_forward(x)
    y, c = gelu_erf_forward(x)
    assert y.dtype == c[1].dtype == np.float32
    x64, dy64 = np.abs(x.astype(np.float64)), np.abs(dy.astype(np.float64))
    assert np.abs(c[1].astype(np.float64) - c_ref[1]).max() <= 1.7e-7
    assert (np.abs(y.astype(np.float64) - y_ref) <= 2.9e-7 * x64).all()
    dx, dx_ref = gelu_erf_backward(dy, c), reference.gelu_erf_backward(dy, c_ref)
    assert dx.dtype == np.float32
    assert (np.abs(dx.astype(np.float64) - dx_ref) <= 4.4e-7 * dy64).all()


# ---- the kernel's own rules ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["tanh", "erf"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gelu_output_from_cache_is_the_forward_output(xp, name, dtype):
    """The MLP's backward remakes fc2's input from the GELU's cache: it must be the same bits."""
    fwd, _ = GELU[name]
    x = xp.asarray(np.linspace(-12, 12, 997).astype(dtype))
    y, cache = fwd(x)
    np.testing.assert_array_equal(backend.to_numpy(gelu_output(cache)), backend.to_numpy(y))


def test_gelu_tanh_in_chunks_is_the_same(monkeypatch):
    """A large input goes by in chunks on NumPy: the same bits as one pass, and the same
    derivatives (checked with chunks of 7 numbers on a small input)."""
    x, dy = randn(np, 2, 3, 10, scale=2.0), randn(np, 2, 3, 10, seed=2)
    y1, c1 = gelu_tanh_forward(x)
    dx1 = gelu_tanh_backward(dy, c1)
    for chunk, pieces in ((7, 9), (16, 1)):      # 60 numbers: 9 chunks; one of 60 <= 4 CHUNKs
        monkeypatch.setattr(gelu, "CHUNK", chunk)
        assert len(gelu._chunks(x.size)) == pieces
        y2, c2 = gelu_tanh_forward(x)
        np.testing.assert_array_equal(y2, y1)
        np.testing.assert_array_equal(c2[1], c1[1])
        np.testing.assert_array_equal(gelu_tanh_backward(dy, c2), dx1)
        check_pair(gelu_tanh_forward, gelu_tanh_backward, (x,), dy, ["x"])


def test_gelu_tanh_remakes_s_above_keep_s_max(monkeypatch):
    """Above KEEP_S_MAX numbers the NumPy tanh GELU's cache leaves s out; the output remade
    from it, s remade and the backward are the same bits as with s kept (and the fast block's
    gradients still check)."""
    x, dy = randn(np, 2, 3, 10, scale=2.0), randn(np, 2, 3, 10, seed=2)
    y1, c1 = gelu_tanh_forward(x)
    assert c1[1] is not None
    dx1 = gelu_tanh_backward(dy, c1)
    for chunk in (7, 1 << 16):
        monkeypatch.setattr(gelu, "CHUNK", chunk)
        monkeypatch.setattr(gelu, "KEEP_S_MAX", 59)               # 60 numbers: left out
        y2, c2 = gelu_tanh_forward(x)
        assert c2[0] is x and c2[1] is None
        np.testing.assert_array_equal(y2, y1)
        np.testing.assert_array_equal(gelu_output(c2), y1)
        np.testing.assert_array_equal(gelu_remake(c2)[1], c1[1])
        np.testing.assert_array_equal(gelu_tanh_backward(dy, c2), dx1)
        check_pair(gelu_tanh_forward, gelu_tanh_backward, (x,), dy, ["x"])
    monkeypatch.setattr(gelu, "KEEP_S_MAX", 0)
    B, N, D, H, F = 3, 4, 6, 2, 8
    cfg = ViTConfig(dim=D, heads=H, gelu="tanh", eps=1e-6)
    p, xb, dyb = block_params(np, cfg, D, F), randn(np, B, N, D), randn(np, B, N, D, seed=15)
    fwd = lambda x_: fast_block.block_forward(x_, p, cfg)
    _, cache = fwd(xb)
    assert cache.mlp.act[1] is None
    dx, g = fast_block.block_backward(dyb, cache)
    check_grads(lambda: float((fwd(xb)[0] * dyb).sum()), [xb] + list(p.values()),
                [dx] + [g[k] for k in p], ["x"] + list(p), tol=TOL)


def test_gelu_tanh_extremes(xp):
    """The tanh GELU, computed through exp(-2u), stays finite and quiet far out in float32."""
    x = xp.asarray(np.array([-1e4, -100.0, -10.0, 0.0, 10.0, 100.0, 1e4], dtype=np.float32))
    with np.errstate(all="raise"):
        y, cache = gelu_tanh_forward(x)
        dx = gelu_tanh_backward(xp.ones_like(x), cache)
    y, dx = backend.to_numpy(y), backend.to_numpy(dx)
    np.testing.assert_array_equal(y[[0, 1, 3]], 0.0)
    np.testing.assert_allclose(y[4:], [10.0, 100.0, 1e4], rtol=1e-7)
    assert abs(y[2]) < 1e-30
    np.testing.assert_array_equal(dx[[0, 1, 5, 6]], [0.0, 0.0, 1.0, 1.0])


def test_normal_cdf_float32_accuracy(monkeypatch):
    """NumPy's float32 Phi (no erf): within 1.1e-7 of math.erfc's everywhere, relative accuracy
    in the lower tail (where 0.5 (1 + erf) has none), exact 0 and 1 far out, no warnings, NaN
    kept; chunks change nothing."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-14, 8, 200_001), rng.uniform(-2, 2, 100_000)]).astype(np.float32)
    ref = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in x])
    with np.errstate(all="raise"):
        got = normal_cdf_float32(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    err = np.abs(got.astype(np.float64) - ref)
    assert err.max() <= 1.1e-7
    tail = (x >= -12) & (x < -1.5)                       # relative, growing with x^2 (docstring)
    assert (err[tail] / ref[tail] / x[tail].astype(np.float64) ** 2).max() <= 1.6e-7
    with np.errstate(all="raise"):
        far = normal_cdf_float32(np.array(
            [-np.inf, -1e30, -1e4, -20.0, 20.0, 1e4, 1e30, np.inf, np.nan], np.float32))
    np.testing.assert_array_equal(far[:8], [0, 0, 0, 0, 1, 1, 1, 1])
    assert np.isnan(far[8])
    monkeypatch.setattr(gelu, "CHUNK", 7)
    x2 = x[:1000].reshape(10, 100)
    np.testing.assert_array_equal(normal_cdf_float32(x2), got[:1000].reshape(10, 100))


def test_normal_cdf_float32_inner_branch():
    """|x| < 1.5 takes only the polynomial branch (no tail): within 1.1e-7 of math.erfc's."""
    x = np.linspace(-1.49, 1.49, 3001).astype(np.float32)
    ref = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in x])
    got = normal_cdf_float32(x)
    assert got.dtype == np.float32
    assert np.abs(got.astype(np.float64) - ref).max() <= 1.1e-7


def test_gelu_erf_float32_uses_the_float32_cdf(xp):
    """The exact GELU in float32 agrees with float64's to float32 rounding (NumPy: through
    normal_cdf_float32, its cache's Phi exactly that function's; CuPy: through its erf)."""
    x64 = xp.asarray(np.linspace(-6, 6, 4001))
    y64, _ = gelu_erf_forward(x64)
    x32 = x64.astype("float32")
    y32, (_, phi32) = gelu_erf_forward(x32)
    assert y32.dtype == np.float32 and phi32.dtype == np.float32
    if xp is np:
        np.testing.assert_array_equal(phi32, normal_cdf_float32(x32))
        np.testing.assert_array_equal(normal_cdf(x32), phi32)
    np.testing.assert_allclose(backend.to_numpy(y32), backend.to_numpy(y64), rtol=4e-7, atol=4e-7)
    np.testing.assert_array_equal(backend.to_numpy(normal_cdf(x64)),
                                  backend.to_numpy(reference.normal_cdf(x64)))   # float64: reference


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1000, 5 * gelu.CHUNK + 17])    # one pass; chunks, a short last
@pytest.mark.parametrize("name", ["tanh", "erf"])
def test_gelu_in_place_is_the_forward_output(name, n, dtype):
    """gelu_in_place overwrites x with the forward's output, bit for bit."""
    x = (randn(np, n) * 4).astype(dtype)
    want = GELU[name][0](x)[0]
    y = x.copy()
    gelu.gelu_in_place(y, name)
    assert np.array_equal(y, want) and not np.array_equal(y, x)
    strided = np.repeat(x, 2)[::2]                        # not contiguous: the forward's copy
    gelu.gelu_in_place(strided, name)
    assert np.array_equal(strided, want)
