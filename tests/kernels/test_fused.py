"""The fused GPU kernels (minivit/kernels/fused.py) against the NumPy formulas they replace and
the reference pairs (skipped without a GPU): the kernels' GELU, normalize and attention run on
CuPy (through fused.py) and on NumPy."""
import numpy as np
import pytest

from minivit import backend
from minivit.kernels import fused
from minivit.kernels.attention import attention_backward_gpu, attention_forward_gpu
from minivit.kernels.gelu import gelu_tanh_backward, gelu_tanh_forward
from minivit.kernels.norm import normalize_backward, normalize_forward
from minivit.layers import attention as reference_attention
from minivit.layers import activations as reference_activations
from minivit.layers import layernorm_backward, layernorm_forward

pytestmark = pytest.mark.skipif(not backend.gpu_available(), reason="needs CuPy and a CUDA GPU")


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


def both(fn, *host_arrays):
    """fn on NumPy arrays and on their CuPy copies; returns (numpy result, cupy result on host)."""
    cp = backend.cupy()
    cpu = fn(*host_arrays)
    gpu = fn(*[cp.asarray(a) for a in host_arrays])
    return _to_host(cpu), _to_host(gpu)


def _to_host(r):
    """NumPy copies of a result that may be an array or (nested) tuples of arrays."""
    if r is None:
        return None
    return tuple(_to_host(v) for v in r) if isinstance(r, tuple) else backend.to_numpy(r)


def close(a, b, dtype):
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_gelu_kernels(dtype):
    """fused.gelu_tanh_* (CuPy) against the kernel's NumPy chunks and the reference tanh form."""
    r = np.random.default_rng(0)
    x = (r.standard_normal((4, 9, 33)) * 3).astype(dtype)
    dy = r.standard_normal((4, 9, 33)).astype(dtype)
    (y, c), (yg, cg) = both(gelu_tanh_forward, x)
    close(y, yg, dtype)
    close(c[1], cg[1], dtype)
    close(reference_activations.gelu_tanh_forward(x)[0], yg, dtype)
    dx, dxg = both(lambda d, x_: gelu_tanh_backward(d, gelu_tanh_forward(x_)[1]), dy, x)
    close(dx, dxg, dtype)
    dx_ref = reference_activations.gelu_tanh_backward(dy, reference_activations.gelu_tanh_forward(x)[1])
    close(dx_ref, dxg, dtype)


def test_layernorm_kernels(dtype):
    """normalize_backward's fused.layernorm_dx (CuPy) against NumPy, and normalize then the
    affine against the reference layernorm pair."""
    r = np.random.default_rng(1)
    x = (r.standard_normal((3, 7, 48)) * 2 + 1).astype(dtype)
    w, b = r.standard_normal(48).astype(dtype), r.standard_normal(48).astype(dtype)
    dy = r.standard_normal(x.shape).astype(dtype)
    y, yg = both(lambda *a: normalize_forward(a[0])[0] * a[1] + a[2], x, w, b)
    close(y, yg, dtype)
    close(layernorm_forward(x, w, b)[0], yg, dtype)
    dx, dxg = both(lambda d, x_, w_: normalize_backward(d * w_, normalize_forward(x_)[1]), dy, x, w)
    close(dx, dxg, dtype)
    close(layernorm_backward(dy, layernorm_forward(x, w, b)[1])[0], dxg, dtype)


def test_softmax_kernels(dtype):
    """fused.softmax_exp / softmax_dx against the reference softmax pair."""
    r = np.random.default_rng(2)
    s = (r.standard_normal((2, 3, 17, 17)) * 4).astype(dtype)
    dp = r.standard_normal((2, 3, 17, 17)).astype(dtype)
    cp = backend.cupy()
    p_ref, _ = reference_attention.softmax_forward(s)
    sg = cp.asarray(s)
    pg = fused.softmax_exp(sg, sg.max(-1, keepdims=True))
    pg /= pg.sum(-1, keepdims=True)
    close(p_ref, backend.to_numpy(pg), dtype)
    dpg = cp.asarray(dp)
    dsg = fused.softmax_dx(dpg, pg, (dpg * pg).sum(-1, keepdims=True))
    close(reference_attention.softmax_backward(dp, p_ref), backend.to_numpy(dsg), dtype)


def test_attention_gpu_kernels(dtype):
    """attention_forward_gpu / attention_backward_gpu (CuPy) against the reference attention
    pair on NumPy: output, probabilities, dqkv."""
    r = np.random.default_rng(3)
    B, N, H, Dh = 2, 9, 3, 8
    qkv = r.standard_normal((B, N, 3 * H * Dh)).astype(dtype)
    dout = r.standard_normal((B, N, H * Dh)).astype(dtype)
    out_ref, c_ref = reference_attention.attention_forward(qkv, H)
    cp = backend.cupy()
    out, c = attention_forward_gpu(cp.asarray(qkv), H)
    close(out_ref, backend.to_numpy(out), dtype)
    close(c_ref.probs, backend.to_numpy(c.maps()), dtype)
    close(reference_attention.attention_backward(dout, c_ref),
          backend.to_numpy(attention_backward_gpu(cp.asarray(dout), c)), dtype)
