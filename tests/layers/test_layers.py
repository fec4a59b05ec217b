"""Finite-difference checks (float64, rel err <= 1e-6) of every layer pair, on each backend."""
import math

import numpy as np
import pytest

from minivit import ViTConfig, backend
from minivit.gradcheck import check_grads
from minivit.layers import (affine_into_linear_backward, affine_into_linear_forward,
                            affine_linear_inputs, attention_backward, attention_forward, cls_backward, cls_forward,
                            cross_entropy_backward, cross_entropy_forward, drop_path_backward,
                            drop_path_forward, dropout_backward, dropout_forward,
                            gelu_erf_backward, gelu_erf_forward, gelu_tanh_backward,
                            gelu_tanh_forward, gelu_output, fold_affine_backward, fold_affine_forward,
                            layernorm_backward, layernorm_forward, normalize_backward,
                            normalize_forward,
                            linear_backward, linear_forward, mhsa_backward, mhsa_forward,
                            patch_embed_backward, patch_embed_forward, patchify,
                            pos_embed_backward, pos_embed_forward, sincos_2d, softmax_backward,
                            softmax_forward, tanh_backward, tanh_forward, unpatchify)
from minivit.layers.block import (block_backward, block_forward, block_qkv_forward, mlp_backward,
                                  mlp_forward)

from conftest import randn

TOL = 1e-6


def check_pair(forward, backward, inputs, dy, names, **kwargs):
    """Check backward(dy, cache) against d/dinputs sum(forward(*inputs)[0] * dy)."""
    out, cache = forward(*inputs)
    assert out.shape == dy.shape
    grads = backward(dy, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert len(grads) == len(inputs)
    return check_grads(lambda: float((forward(*inputs)[0] * dy).sum()), inputs, grads, names,
                       tol=TOL, **kwargs)


def test_linear(xp):
    x, w, b = randn(xp, 2, 5, 6), randn(xp, 6, 7), randn(xp, 7)
    check_pair(linear_forward, linear_backward, (x, w, b), randn(xp, 2, 5, 7), ["x", "w", "b"])


def test_layernorm(xp):
    x, w, b = randn(xp, 2, 5, 8, scale=3.0), randn(xp, 8), randn(xp, 8)
    x += randn(xp, 2, 5, 1, seed=5)                       # per-token offsets, non-degenerate
    check_pair(lambda *a: layernorm_forward(*a, eps=1e-6), layernorm_backward, (x, w, b),
               randn(xp, 2, 5, 8, seed=1), ["x", "w", "b"])


def test_normalize(xp):
    x = randn(xp, 2, 5, 8, scale=3.0) + randn(xp, 2, 5, 1, seed=5)
    check_pair(normalize_forward, normalize_backward, (x,), randn(xp, 2, 5, 8, seed=1), ["x"])


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

    plain = linear_forward(layernorm_forward(x, w, b)[0], W, c)[0]
    np.testing.assert_allclose(backend.to_numpy(folded(x, w, b, W, c)[0]), backend.to_numpy(plain),
                               rtol=1e-12, atol=1e-13)
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
    plain = linear_forward(layernorm_forward(x, w, b)[0], W, c)[0]
    np.testing.assert_allclose(backend.to_numpy(z), backend.to_numpy(plain), rtol=1e-12, atol=1e-13)
    check_pair(fwd, bwd, (x, w, b, W, c), dz, ["x", "w", "b", "W", "c"])


def test_layernorm_normalizes(xp):
    x = randn(xp, 3, 4, 16, scale=5.0) + 2.0
    y, _ = layernorm_forward(x, xp.ones(16), xp.zeros(16), eps=1e-6)
    np.testing.assert_allclose(backend.to_numpy(y.mean(-1)), 0, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(y.var(-1)), 1, rtol=1e-5)


@pytest.mark.parametrize("fwd,bwd", [(gelu_tanh_forward, gelu_tanh_backward),
                                     (gelu_erf_forward, gelu_erf_backward),
                                     (tanh_forward, tanh_backward)])
def test_activations(xp, fwd, bwd):
    x = randn(xp, 2, 3, 10, scale=2.0)
    check_pair(fwd, bwd, (x,), randn(xp, 2, 3, 10, seed=2), ["x"])


@pytest.mark.parametrize("fwd", [gelu_tanh_forward, gelu_erf_forward])
def test_gelu_output_from_cache_is_the_forward_output(xp, fwd):
    """The MLP's backward remakes fc2's input from the GELU's cache: it must be the same bits."""
    for dtype in ("float32", "float64"):
        x = xp.asarray(np.linspace(-12, 12, 997).astype(dtype))
        y, cache = fwd(x)
        np.testing.assert_array_equal(backend.to_numpy(gelu_output(cache)), backend.to_numpy(y))


def test_gelu_tanh_in_chunks_is_the_same(monkeypatch):
    """A large input goes by in chunks on NumPy: the same bits as one pass, and the same
    derivatives (checked with chunks of 7 numbers on a small input)."""
    from minivit.layers import activations
    x, dy = randn(np, 2, 3, 10, scale=2.0), randn(np, 2, 3, 10, seed=2)
    y1, c1 = gelu_tanh_forward(x)
    dx1 = gelu_tanh_backward(dy, c1)
    for chunk, pieces in ((7, 9), (16, 1)):      # 60 numbers: 9 chunks; one of 60 > CHUNK
        monkeypatch.setattr(activations, "CHUNK", chunk)
        assert len(activations._chunks(x.size)) == pieces
        y2, c2 = gelu_tanh_forward(x)
        np.testing.assert_array_equal(y2, y1)
        np.testing.assert_array_equal(c2[1], c1[1])
        np.testing.assert_array_equal(gelu_tanh_backward(dy, c2), dx1)
        check_pair(gelu_tanh_forward, gelu_tanh_backward, (x,), dy, ["x"])


def test_gelu_tanh_remakes_s_above_keep_s_max(monkeypatch):
    """Above KEEP_S_MAX numbers the NumPy tanh GELU's cache leaves s out; the output remade
    from it, s remade and the backward are the same bits as with s kept (and the block's
    gradients still check)."""
    from minivit.layers import activations
    x, dy = randn(np, 2, 3, 10, scale=2.0), randn(np, 2, 3, 10, seed=2)
    y1, c1 = gelu_tanh_forward(x)
    assert c1[1] is not None
    dx1 = gelu_tanh_backward(dy, c1)
    for chunk in (7, 1 << 16):
        monkeypatch.setattr(activations, "CHUNK", chunk)
        monkeypatch.setattr(activations, "KEEP_S_MAX", 59)        # 60 numbers: left out
        y2, c2 = gelu_tanh_forward(x)
        assert c2[0] is x and c2[1] is None
        np.testing.assert_array_equal(y2, y1)
        np.testing.assert_array_equal(gelu_output(c2), y1)
        np.testing.assert_array_equal(activations.gelu_remake(c2)[1], c1[1])
        np.testing.assert_array_equal(gelu_tanh_backward(dy, c2), dx1)
        check_pair(gelu_tanh_forward, gelu_tanh_backward, (x,), dy, ["x"])
    monkeypatch.setattr(activations, "KEEP_S_MAX", 0)
    B, N, D, H, F = 3, 4, 6, 2, 8
    p, xb, dyb = _block_params(np, D, F), randn(np, B, N, D), randn(np, B, N, D, seed=15)
    cfg = ViTConfig(dim=D, heads=H, gelu="tanh", eps=1e-6)
    fwd = lambda x_: block_forward(x_, p, cfg)
    _, cache = fwd(xb)
    assert cache.mlp.act[1] is None
    dx, g = block_backward(dyb, cache)
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


def test_gelu_values(xp):
    x = xp.asarray(np.linspace(-5, 5, 101))
    erf = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in backend.to_numpy(x)])
    np.testing.assert_allclose(backend.to_numpy(gelu_erf_forward(x)[0]), erf, rtol=1e-14, atol=1e-15)
    tanh = backend.to_numpy(gelu_tanh_forward(x)[0])
    assert np.abs(tanh - erf).max() < 1e-3                # the approximation is close, not equal
    assert np.abs(tanh - erf).max() > 1e-6


def test_normal_cdf_float32_accuracy(monkeypatch):
    """NumPy's float32 Phi (no erf): within 1.1e-7 of math.erfc's everywhere, relative accuracy
    in the lower tail (where 0.5 (1 + erf) has none), exact 0 and 1 far out, no warnings, NaN
    kept; chunks change nothing."""
    from minivit.layers import activations
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-14, 8, 200_001), rng.uniform(-2, 2, 100_000)]).astype(np.float32)
    ref = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in x])
    with np.errstate(all="raise"):
        got = activations.normal_cdf_float32(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    err = np.abs(got.astype(np.float64) - ref)
    assert err.max() <= 1.1e-7
    tail = (x >= -12) & (x < -1.5)                       # relative, growing with x^2 (docstring)
    assert (err[tail] / ref[tail] / x[tail].astype(np.float64) ** 2).max() <= 1.6e-7
    with np.errstate(all="raise"):
        far = activations.normal_cdf_float32(np.array(
            [-np.inf, -1e30, -1e4, -20.0, 20.0, 1e4, 1e30, np.inf, np.nan], np.float32))
    np.testing.assert_array_equal(far[:8], [0, 0, 0, 0, 1, 1, 1, 1])
    assert np.isnan(far[8])
    monkeypatch.setattr(activations, "CHUNK", 7)
    x2 = x[:1000].reshape(10, 100)
    np.testing.assert_array_equal(activations.normal_cdf_float32(x2), got[:1000].reshape(10, 100))


def test_gelu_erf_float32_uses_the_float32_cdf(xp):
    """The exact GELU in float32 agrees with float64's to float32 rounding (NumPy: through
    normal_cdf_float32, CuPy: through its erf)."""
    x64 = xp.asarray(np.linspace(-6, 6, 4001))
    y64, _ = gelu_erf_forward(x64)
    y32, (_, phi32) = gelu_erf_forward(x64.astype("float32"))
    assert y32.dtype == np.float32 and phi32.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(y32), backend.to_numpy(y64), rtol=4e-7, atol=4e-7)


def test_softmax(xp):
    s = randn(xp, 2, 3, 4, 5, scale=2.0)
    check_pair(softmax_forward, softmax_backward, (s,), randn(xp, 2, 3, 4, 5, seed=3), ["s"])
    p, _ = softmax_forward(s)                             # normalizes down the first axis
    np.testing.assert_allclose(backend.to_numpy(p.sum(0)), np.ones((3, 4, 5)), rtol=1e-14)
    p, _ = softmax_forward(xp.asarray([[1000.0], [0.0], [-1000.0]]))   # stable for huge scores
    np.testing.assert_allclose(backend.to_numpy(p), [[1.0], [0.0], [0.0]])


def test_softmax_overwrite_is_the_same_in_place(xp):
    s = randn(xp, 5, 2, 3, 4, scale=3.0)
    p1, _ = softmax_forward(s)
    s2 = s.copy()
    p2, _ = softmax_forward(s2, overwrite=True)
    np.testing.assert_array_equal(backend.to_numpy(p2), backend.to_numpy(p1))
    if xp is np:                                          # written over the scores
        assert np.shares_memory(p2, s2)
        np.testing.assert_array_equal(s2, p1)
    np.testing.assert_array_equal(backend.to_numpy(softmax_forward(s)[0]), backend.to_numpy(p1))


def test_attention_core(xp):
    B, N, H, Dh = 2, 5, 3, 4
    qkv = randn(xp, B, N, 3 * H * Dh)
    check_pair(lambda a: attention_forward(a, H), attention_backward, (qkv,),
               randn(xp, B, N, H * Dh, seed=4), ["qkv"])


def test_attention_matches_per_head_loop(xp):
    """The vectorized heads equal one explicit loop over heads: q | k | v, heads contiguous."""
    B, N, H, Dh = 2, 4, 2, 3
    D = H * Dh
    qkv = randn(xp, B, N, 3 * D)
    out, _ = attention_forward(qkv, H)
    for h in range(H):
        q = qkv[..., h * Dh:(h + 1) * Dh]
        k = qkv[..., D + h * Dh:D + (h + 1) * Dh]
        v = qkv[..., 2 * D + h * Dh:2 * D + (h + 1) * Dh]
        s = q @ k.swapaxes(1, 2) / math.sqrt(Dh)
        a = xp.exp(s) / xp.exp(s).sum(-1, keepdims=True)
        np.testing.assert_allclose(backend.to_numpy(out[..., h * Dh:(h + 1) * Dh]),
                                   backend.to_numpy(a @ v), rtol=1e-12)


def test_attention_dropout_fixed_mask(xp):
    B, N, H, Dh = 2, 4, 2, 3
    qkv = randn(xp, B, N, 3 * H * Dh)
    fwd = lambda a: attention_forward(a, H, 0.3, backend.rng(7))   # same mask at every call
    out, cache = fwd(qkv)
    assert cache[5] is not None and float((cache[5] == 0).mean()) > 0.05
    check_pair(fwd, attention_backward, (qkv,), randn(xp, B, N, H * Dh, seed=6), ["qkv"])


def test_mhsa(xp):
    B, N, D, H = 2, 5, 6, 2
    args = (randn(xp, B, N, D), randn(xp, D, 3 * D, scale=0.5), randn(xp, 3 * D),
            randn(xp, D, D), randn(xp, D))
    check_pair(lambda *a: mhsa_forward(*a, heads=H), mhsa_backward, args,
               randn(xp, B, N, D, seed=8), ["x", "qkv_w", "qkv_b", "proj_w", "proj_b"])


@pytest.mark.parametrize("fwd,bwd,shape", [(dropout_forward, dropout_backward, (2, 3, 4)),
                                           (drop_path_forward, drop_path_backward, (4, 3, 2))])
def test_dropouts_fixed_mask(xp, fwd, bwd, shape):
    x = randn(xp, *shape)
    f = lambda a: fwd(a, 0.4, backend.rng(3))
    y, mask = f(x)
    kept = np.broadcast_to(backend.to_numpy(mask != 0), shape)
    assert 0 < kept.mean() < 1                            # some dropped, some kept
    np.testing.assert_allclose(backend.to_numpy(y)[kept], backend.to_numpy(x)[kept] / 0.6)
    if fwd is drop_path_forward:                          # one decision per sample
        assert mask.shape == (shape[0], 1, 1)
    check_pair(f, bwd, (x,), randn(xp, *shape, seed=9), ["x"])
    assert fwd(x, 0.4, None)[0] is x                      # evaluation: identity


def test_dropout_scales_expectation(xp):
    x = xp.ones((200, 500))
    y, _ = dropout_forward(x, 0.25, backend.rng(0))
    assert abs(float(y.mean()) - 1.0) < 0.01


def test_patchify_layout_and_inverse(xp):
    B, C, H, W, p = 2, 3, 6, 4, 2
    x = xp.asarray(np.arange(B * C * H * W, dtype=np.float64).reshape(B, C, H, W))
    patches = patchify(x, p)                              # (B, 6, 12)
    assert patches.shape == (B, (H // p) * (W // p), p * p * C)
    # patch (gi, gj) = (1, 1) is number 1*2+1 = 3; its element (i, j, c) sits at (i*p + j)*C + c
    for i in range(p):
        for j in range(p):
            for c in range(C):
                assert patches[1, 3, (i * p + j) * C + c] == x[1, c, 1 * p + i, 1 * p + j]
    assert (unpatchify(patches, p, C, H, W) == x).all()


def test_patch_embed_is_strided_conv(xp):
    B, C, S, p, D = 2, 3, 6, 3, 4
    x, w, b = randn(xp, B, C, S, S), randn(xp, p * p * C, D), randn(xp, D)
    y, _ = patch_embed_forward(x, w, b, p)
    kernel = w.reshape(p, p, C, D)                        # (kh, kw, C, D)
    for gi in range(S // p):
        for gj in range(S // p):
            win = x[:, :, gi * p:(gi + 1) * p, gj * p:(gj + 1) * p]       # (B, C, p, p)
            conv = xp.einsum("bcij,ijcd->bd", win, kernel) + b
            np.testing.assert_allclose(backend.to_numpy(y[:, gi * (S // p) + gj]),
                                       backend.to_numpy(conv), rtol=1e-12)
    check_pair(lambda *a: patch_embed_forward(*a, p=p), patch_embed_backward, (x, w, b),
               randn(xp, B, 4, D, seed=10), ["x", "w", "b"])


def test_cls_and_pos(xp):
    B, P, D = 3, 4, 5
    check_pair(cls_forward, cls_backward, (randn(xp, B, P, D), randn(xp, 1, 1, D)),
               randn(xp, B, P + 1, D, seed=11), ["tokens", "cls"])
    check_pair(pos_embed_forward, pos_embed_backward, (randn(xp, B, P, D), randn(xp, 1, P, D)),
               randn(xp, B, P, D, seed=12), ["x", "pos"])


def test_sincos_table():
    t = sincos_2d(grid=3, dim=8, dtype="float64")
    assert t.shape == (1, 10, 8)
    assert (t[0, 0] == 0).all()                           # CLS row
    # patch (r, c) = (1, 2) is token 1 + 1*3 + 2 = 6; omega = [1, 1/100]
    omega = np.array([1.0, 0.01])
    want = np.concatenate([np.sin(omega), np.cos(omega), np.sin(2 * omega), np.cos(2 * omega)])
    np.testing.assert_allclose(t[0, 6], want, rtol=1e-15)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(3, 6)


def test_cross_entropy(xp):
    B, K = 4, 5
    labels = xp.asarray([0, 3, 1, 4])
    for smoothing in (0.0, 0.1):
        z = randn(xp, B, K, scale=2.0)
        loss, cache = cross_entropy_forward(z, labels, smoothing)
        dz = cross_entropy_backward(cache)
        check_grads(lambda: cross_entropy_forward(z, labels, smoothing)[0], (z,), (dz,), ["z"], tol=TOL)
        zh = backend.to_numpy(z)
        logp = zh - np.log(np.exp(zh).sum(1, keepdims=True))
        t = np.full((B, K), smoothing / K)
        t[np.arange(B), backend.to_numpy(labels)] += 1 - smoothing
        assert abs(loss - float(-(t * logp).sum(1).mean())) < 1e-12


def test_cross_entropy_bad_labels(xp):
    z = randn(xp, 2, 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        cross_entropy_forward(z, xp.asarray([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        cross_entropy_forward(z, xp.asarray([0, 1, 2]))


def test_mlp(xp):
    B, N, D, F = 2, 3, 4, 6
    args = (randn(xp, B, N, D), randn(xp, D, F), randn(xp, F), randn(xp, F, D), randn(xp, D))
    for gelu in ("tanh", "erf"):
        check_pair(lambda *a: mlp_forward(*a, gelu=gelu), mlp_backward, args,
                   randn(xp, B, N, D, seed=13), ["x", "w1", "b1", "w2", "b2"])
    f = lambda *a: mlp_forward(*a, dropout=0.3, rng=backend.rng(5))
    check_pair(f, mlp_backward, args, randn(xp, B, N, D, seed=14), ["x", "w1", "b1", "w2", "b2"])


def _block_params(xp, D, F):
    shapes = {"norm1.w": (D,), "norm1.b": (D,), "attn.qkv.w": (D, 3 * D), "attn.qkv.b": (3 * D,),
              "attn.proj.w": (D, D), "attn.proj.b": (D,), "norm2.w": (D,), "norm2.b": (D,),
              "mlp.fc1.w": (D, F), "mlp.fc1.b": (F,), "mlp.fc2.w": (F, D), "mlp.fc2.b": (D,)}
    return {k: randn(xp, *s, seed=i, scale=0.7) for i, (k, s) in enumerate(shapes.items())}


@pytest.mark.parametrize("rates", [(0.0, 0.0, 0.0), (0.2, 0.3, 0.5)])
def test_block(xp, rates):
    B, N, D, H, F = 3, 4, 6, 2, 8
    dropout, attn_dropout, drop_path = rates
    p, x, dy = _block_params(xp, D, F), randn(xp, B, N, D), randn(xp, B, N, D, seed=15)
    cfg = ViTConfig(dim=D, heads=H, gelu="tanh", eps=1e-6, dropout=dropout,
                    attn_dropout=attn_dropout)
    fwd = lambda x_: block_forward(x_, p, cfg, drop_path=drop_path,
                                   rng=backend.rng(11) if any(rates) else None)
    _, cache = fwd(x)
    # what the cache leaves out, backward remakes: the folded qkv and fc1 weights, fc2's input
    assert cache.attn.qkv[1] is None and cache.mlp.fc1[1] is None and cache.mlp.fc2[0] is None
    dx, g = block_backward(dy, cache)
    assert set(g) == set(p)
    names = ["x"] + list(p)
    check_grads(lambda: float((fwd(x)[0] * dy).sum()), [x] + list(p.values()),
                [dx] + [g[k] for k in p], names, tol=TOL)


def test_attention_first_query_only(xp):
    """queries=1 gives exactly the CLS row of full attention, and its gradients check."""
    B, N, H, Dh = 2, 5, 2, 3
    qkv = randn(xp, B, N, 3 * H * Dh)
    full, _ = attention_forward(qkv, H)
    first, _ = attention_forward(qkv, H, queries=1)
    assert first.shape == (B, 1, H * Dh)
    np.testing.assert_allclose(backend.to_numpy(first), backend.to_numpy(full[:, :1]), rtol=1e-13)
    check_pair(lambda a: attention_forward(a, H, queries=1), attention_backward, (qkv,),
               randn(xp, B, 1, H * Dh, seed=16), ["qkv"])


@pytest.mark.parametrize("queries", [0, 1, 3])
def test_block_qkv_with_q_for_the_first_rows_only(xp, queries):
    """block_qkv_forward(queries=Q): every row's k and v and the first Q rows' q are those of
    the whole product (the rest of q is not computed, and not read)."""
    B, N, D, H, F = 3, 5, 6, 2, 8
    p, x = _block_params(xp, D, F), randn(xp, B, N, D)
    cfg = ViTConfig(dim=D, heads=H, eps=1e-6)
    whole, _ = block_qkv_forward(x, p, cfg)
    some, (_, _, c_lin) = block_qkv_forward(x, p, cfg, queries=queries)
    assert some.shape == whole.shape == (B, N, 3 * D) and c_lin[2] == (B, N, D)
    w, s = backend.to_numpy(whole), backend.to_numpy(some)
    np.testing.assert_allclose(s[:, :, D:], w[:, :, D:], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(s[:, :queries, :D], w[:, :queries, :D], rtol=1e-13, atol=1e-15)


def test_block_cls_only(xp):
    B, N, D, H, F = 3, 4, 6, 2, 8
    p, x, dy = _block_params(xp, D, F), randn(xp, B, N, D), randn(xp, B, 1, D, seed=17)
    cfg = ViTConfig(dim=D, heads=H, gelu="erf", eps=1e-6)
    fwd = lambda x_: block_forward(x_, p, cfg, cls_only=True)
    y, cache = fwd(x)
    np.testing.assert_allclose(backend.to_numpy(y), backend.to_numpy(block_forward(x, p, cfg)[0][:, :1]),
                               rtol=1e-13)
    dx, g = block_backward(dy, cache)
    check_grads(lambda: float((fwd(x)[0] * dy).sum()), [x] + list(p.values()),
                [dx] + [g[k] for k in p], ["x"] + list(p), tol=TOL)
