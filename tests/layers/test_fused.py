"""The fused GPU kernels against the NumPy formulas they replace (skipped without a GPU)."""
import numpy as np
import pytest

from minivit import backend
from minivit.layers import (gelu_tanh_backward, gelu_tanh_forward, layernorm_backward,
                            layernorm_forward, softmax_backward, softmax_forward)

pytestmark = pytest.mark.skipif(not backend.gpu_available(), reason="needs CuPy and a CUDA GPU")


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


def both(fn, *host_arrays):
    """fn on NumPy arrays and on their CuPy copies; returns (numpy result, cupy result on host)."""
    cp = backend.cupy()
    cpu = fn(*host_arrays)
    gpu = fn(*[cp.asarray(a) for a in host_arrays])
    return cpu, _to_host(gpu)


def _to_host(r):
    """NumPy copies of a result that may be an array or (nested) tuples of arrays."""
    return tuple(_to_host(v) for v in r) if isinstance(r, tuple) else backend.to_numpy(r)


def close(a, b, dtype):
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_gelu_kernels(dtype):
    r = np.random.default_rng(0)
    x, dy = (r.standard_normal((4, 9, 33)) * 3).astype(dtype), r.standard_normal((4, 9, 33)).astype(dtype)
    (y, c), (yg, cg) = both(gelu_tanh_forward, x)
    close(y, yg, dtype)
    close(c[1], cg[1], dtype)
    dx, dxg = both(lambda d, x_: gelu_tanh_backward(d, gelu_tanh_forward(x_)[1]), dy, x)
    close(dx, dxg, dtype)


def test_layernorm_kernels(dtype):
    r = np.random.default_rng(1)
    x, w, b = (r.standard_normal((3, 7, 48)) * 2 + 1).astype(dtype), r.standard_normal(48).astype(dtype), r.standard_normal(48).astype(dtype)
    dy = r.standard_normal(x.shape).astype(dtype)
    y, yg = both(lambda *a: layernorm_forward(*a)[0], x, w, b)
    close(y, yg, dtype)
    g, gg = both(lambda d, *a: layernorm_backward(d, layernorm_forward(*a)[1]), dy, x, w, b)
    for a, b_ in zip(g, gg):
        close(a, b_, dtype)


def test_softmax_kernels(dtype):
    r = np.random.default_rng(2)
    s, dp = (r.standard_normal((2, 3, 17, 17)) * 4).astype(dtype), r.standard_normal((2, 3, 17, 17)).astype(dtype)
    p, pg = both(lambda s_: softmax_forward(s_)[0], s)
    close(p, pg, dtype)
    ds, dsg = both(lambda d, s_: softmax_backward(d, softmax_forward(s_)[0]), dp, s)
    close(ds, dsg, dtype)
