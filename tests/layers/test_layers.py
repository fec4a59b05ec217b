"""The reference pairs of minivit/layers/: finite-difference checks (float64, rel err <= 1e-6,
batch > 1, heads > 1) of every pair, on each backend, and the values each op must compute."""
import math

import numpy as np
import pytest

from minivit import ViTConfig, backend
from minivit.gradcheck import check_grads
from minivit.layers import (GELU, AttentionCache, BatchRows, BlockCache, attention_backward,
                            attention_forward, attention_probs, block_attention, block_backward,
                            block_forward, cls_backward, cls_forward, cross_entropy_backward,
                            cross_entropy_forward, drop_path_backward, drop_path_forward,
                            dropout_backward, dropout_forward, dropout_mask, gelu_erf_backward,
                            gelu_erf_forward, gelu_tanh_backward, gelu_tanh_forward,
                            layernorm_backward, layernorm_forward, linear_backward,
                            linear_forward, mhsa_backward, mhsa_forward, mlp_backward,
                            mlp_forward, normal_cdf, patch_embed_backward, patch_embed_forward,
                            patchify, pos_embed_backward, pos_embed_forward, sincos_2d,
                            softmax_backward, softmax_forward, split_heads, tanh_backward,
                            tanh_forward, unpatchify)
from minivit.layers.activations import A_TANH, C_TANH

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


# ---- linear, LayerNorm ---------------------------------------------------------------------

def test_linear(xp):
    x, w, b = randn(xp, 2, 5, 6), randn(xp, 6, 7), randn(xp, 7)
    check_pair(linear_forward, linear_backward, (x, w, b), randn(xp, 2, 5, 7), ["x", "w", "b"])


def test_layernorm(xp):
    x, w, b = randn(xp, 2, 5, 8, scale=3.0), randn(xp, 8), randn(xp, 8)
    x += randn(xp, 2, 5, 1, seed=5)                       # per-token offsets, non-degenerate
    check_pair(lambda *a: layernorm_forward(*a, eps=1e-6), layernorm_backward, (x, w, b),
               randn(xp, 2, 5, 8, seed=1), ["x", "w", "b"])


def test_layernorm_normalizes(xp):
    x = randn(xp, 3, 4, 16, scale=5.0) + 2.0
    y, _ = layernorm_forward(x, xp.ones(16), xp.zeros(16), eps=1e-6)
    np.testing.assert_allclose(backend.to_numpy(y.mean(-1)), 0, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(y.var(-1)), 1, rtol=1e-5)
    w, b = randn(xp, 16, seed=2), randn(xp, 16, seed=3)   # then the affine, channel by channel
    yw, _ = layernorm_forward(x, w, b, eps=1e-6)
    np.testing.assert_allclose(backend.to_numpy(yw), backend.to_numpy(y * w + b), rtol=1e-14,
                               atol=1e-14)


# ---- activations ---------------------------------------------------------------------------

@pytest.mark.parametrize("fwd,bwd", [(gelu_tanh_forward, gelu_tanh_backward),
                                     (gelu_erf_forward, gelu_erf_backward),
                                     (tanh_forward, tanh_backward)])
def test_activations(xp, fwd, bwd):
    x = randn(xp, 2, 3, 10, scale=2.0)
    check_pair(fwd, bwd, (x,), randn(xp, 2, 3, 10, seed=2), ["x"])


def test_gelu_dict_names_the_pairs():
    assert GELU == {"tanh": (gelu_tanh_forward, gelu_tanh_backward),
                    "erf": (gelu_erf_forward, gelu_erf_backward)}


def test_gelu_values(xp):
    """Both forms against math: the erf form to double precision, the tanh form to its formula
    0.5 x (1 + tanh(c (x + a x^3))) (within 1e-15 absolute where 1 + tanh u cancels), and the
    tanh form close to the erf form, but not equal."""
    x = xp.asarray(np.linspace(-5, 5, 101))
    xh = backend.to_numpy(x)
    erf = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in xh])
    np.testing.assert_allclose(backend.to_numpy(gelu_erf_forward(x)[0]), erf, rtol=1e-14, atol=1e-15)
    tanh = backend.to_numpy(gelu_tanh_forward(x)[0])
    want = np.array([0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
                     for v in xh])
    np.testing.assert_allclose(tanh, want, rtol=1e-14, atol=1e-15)
    assert C_TANH == math.sqrt(2 / math.pi) and A_TANH == 0.044715
    assert np.abs(tanh - erf).max() < 1e-3                # the approximation is close, not equal
    assert np.abs(tanh - erf).max() > 1e-6


def test_normal_cdf_values(xp):
    x = np.linspace(-8, 8, 161)
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    got = backend.to_numpy(normal_cdf(xp.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=0, atol=4e-16)   # 0.5 (1 + erf): absolute accuracy
    assert got[80] == 0.5


def test_gelu_tanh_reference_extremes(xp):
    """The reference tanh GELU stays finite and quiet far out in float32: 0 (or -0) far below,
    x far above, slope 0 and 1."""
    x = xp.asarray(np.array([-1e4, -100.0, -10.0, 0.0, 10.0, 100.0, 1e4], dtype=np.float32))
    with np.errstate(all="raise"):
        y, cache = gelu_tanh_forward(x)
        dx = gelu_tanh_backward(xp.ones_like(x), cache)
    y, dx = backend.to_numpy(y), backend.to_numpy(dx)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_array_equal(y[[0, 1, 2, 3]], 0.0)
    np.testing.assert_allclose(y[4:], [10.0, 100.0, 1e4], rtol=1e-7)
    np.testing.assert_array_equal(dx[[0, 1, 5, 6]], [0.0, 0.0, 1.0, 1.0])


# ---- softmax and attention -----------------------------------------------------------------

def test_softmax(xp):
    """Over the last axis (one row per query): gradients, rows summing to 1, huge scores."""
    s = randn(xp, 2, 3, 4, 5, scale=2.0)
    check_pair(softmax_forward, softmax_backward, (s,), randn(xp, 2, 3, 4, 5, seed=3), ["s"])
    p, _ = softmax_forward(s)
    np.testing.assert_allclose(backend.to_numpy(p.sum(-1)), np.ones((2, 3, 4)), rtol=1e-14)
    assert float(p.min()) > 0
    p, _ = softmax_forward(xp.asarray([[1000.0, 0.0, -1000.0]]))   # stable for huge scores
    np.testing.assert_allclose(backend.to_numpy(p), [[1.0, 0.0, 0.0]])


def test_split_heads_layout(xp):
    """q, k, v (B, H, N, Dh) from qkv laid out [q | k | v], heads contiguous in each third."""
    B, N, H, Dh = 2, 3, 2, 4
    D = H * Dh
    qkv = randn(xp, B, N, 3 * D)
    parts = split_heads(qkv, H)
    assert len(parts) == 3
    for t, part in enumerate(parts):
        assert part.shape == (B, H, N, Dh)
        for h in range(H):
            cols = slice(t * D + h * Dh, t * D + (h + 1) * Dh)
            np.testing.assert_array_equal(backend.to_numpy(part[:, h]),
                                          backend.to_numpy(qkv[..., cols]))


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
    out, cache = attention_forward(qkv, H)
    assert out.shape == (B, N, D)
    for h in range(H):
        q = qkv[..., h * Dh:(h + 1) * Dh]
        k = qkv[..., D + h * Dh:D + (h + 1) * Dh]
        v = qkv[..., 2 * D + h * Dh:2 * D + (h + 1) * Dh]
        s = q @ k.swapaxes(1, 2) / math.sqrt(Dh)
        a = xp.exp(s) / xp.exp(s).sum(-1, keepdims=True)
        np.testing.assert_allclose(backend.to_numpy(out[..., h * Dh:(h + 1) * Dh]),
                                   backend.to_numpy(a @ v), rtol=1e-12)
        np.testing.assert_allclose(backend.to_numpy(cache.probs[:, h]), backend.to_numpy(a),
                                   rtol=1e-12)


def test_attention_maps_are_the_probs(xp):
    """The cache keeps the probabilities queries first (B, H, N, N): maps() and attention_probs
    hand them out, each row a distribution over the keys."""
    B, N, H, Dh = 2, 5, 3, 2
    _, cache = attention_forward(randn(xp, B, N, 3 * H * Dh), H)
    assert isinstance(cache, AttentionCache)
    assert cache.maps() is cache.probs and attention_probs(cache) is cache.probs
    assert cache.probs.shape == (B, H, N, N) and cache.mask is None
    assert cache.scale == Dh ** -0.5
    np.testing.assert_allclose(backend.to_numpy(cache.probs.sum(-1)), 1.0, rtol=1e-14)


def test_attention_dropout_fixed_mask(xp):
    B, N, H, Dh = 2, 4, 2, 3
    qkv = randn(xp, B, N, 3 * H * Dh)
    fwd = lambda a: attention_forward(a, H, 0.3, backend.rng(7))   # same mask at every call
    out, cache = fwd(qkv)
    assert cache.mask.shape == (B, H, N, N) and float((cache.mask == 0).mean()) > 0.05
    o = (cache.probs * cache.mask) @ cache.v                         # (B, H, N, Dh)
    np.testing.assert_allclose(backend.to_numpy(out),
                               backend.to_numpy(o.transpose(0, 2, 1, 3).reshape(B, N, H * Dh)),
                               rtol=1e-14)
    check_pair(fwd, attention_backward, (qkv,), randn(xp, B, N, H * Dh, seed=6), ["qkv"])


def test_mhsa(xp):
    B, N, D, H = 2, 5, 6, 2
    args = (randn(xp, B, N, D), randn(xp, D, 3 * D, scale=0.5), randn(xp, 3 * D),
            randn(xp, D, D), randn(xp, D))
    check_pair(lambda *a: mhsa_forward(*a, heads=H), mhsa_backward, args,
               randn(xp, B, N, D, seed=8), ["x", "qkv_w", "qkv_b", "proj_w", "proj_b"])
    check_pair(lambda *a: mhsa_forward(*a, heads=H, attn_dropout=0.3, rng=backend.rng(2)),
               mhsa_backward, args, randn(xp, B, N, D, seed=8),
               ["x", "qkv_w", "qkv_b", "proj_w", "proj_b"])


# ---- dropout and drop path -----------------------------------------------------------------

@pytest.mark.parametrize("fwd,bwd,shape", [(dropout_forward, dropout_backward, (2, 3, 4)),
                                           (drop_path_forward, drop_path_backward, (4, 3, 2))])
def test_dropouts_fixed_mask(xp, fwd, bwd, shape):
    x = randn(xp, *shape)
    f = lambda a: fwd(a, 0.4, backend.rng(3))
    y, mask = f(x)
    kept = np.broadcast_to(backend.to_numpy(mask != 0), shape)
    assert 0 < kept.mean() < 1                            # some dropped, some kept
    np.testing.assert_allclose(backend.to_numpy(y)[kept], backend.to_numpy(x)[kept] / 0.6)
    assert (backend.to_numpy(y)[~kept] == 0).all()
    if fwd is drop_path_forward:                          # one decision per sample
        assert mask.shape == (shape[0], 1, 1)
    check_pair(f, bwd, (x,), randn(xp, *shape, seed=9), ["x"])
    assert fwd(x, 0.4, None)[0] is x                      # evaluation: identity
    y0, m0 = fwd(x, 0.0, backend.rng(3))                 # rate 0: identity
    assert y0 is x and m0 is None


def test_dropout_scales_expectation(xp):
    x = xp.ones((200, 500))
    y, _ = dropout_forward(x, 0.25, backend.rng(0))
    assert abs(float(y.mean()) - 1.0) < 0.01
    assert abs(float((y == 0).mean()) - 0.25) < 0.01


def test_dropout_mask(xp):
    """The scaled keep-mask: values 0 and 1 / (1 - rate) in the dtype asked for; None without a
    rate or a mask source."""
    m = dropout_mask((3, 4, 5), "float32", 0.5, backend.rng(1))
    assert m.shape == (3, 4, 5) and m.dtype == np.float32
    assert set(np.unique(backend.to_numpy(m)).tolist()) == {0.0, 2.0}
    assert dropout_mask((3, 4), "float64", 0.0, backend.rng(1)) is None
    assert dropout_mask((3, 4), "float64", 0.5, None) is None


def test_batch_rows_pieces_agree_with_the_whole_batch():
    """Masks drawn through the rows of a BatchRows are the whole batch's rows, draw after draw
    (of different shapes), however the batch is split; the generator is made on the first draw."""
    total, shapes = 5, [(2, 3), (4,), (1, 1)]
    whole = BatchRows(9, 0, total, total)
    assert whole._gen is None
    want = [whole.random((total,) + s, np.float64) for s in shapes]
    assert whole._gen is not None
    for cut in ([slice(0, 2), slice(2, 5)], [slice(0, 1), slice(1, 4), slice(4, 5)]):
        for piece in cut:
            src = BatchRows(9, 0, total, total).rows(piece)
            assert (src.start, src.stop, src.total) == (piece.start, piece.stop, total)
            for s, w in zip(shapes, want):
                n = piece.stop - piece.start
                np.testing.assert_array_equal(src.random((n,) + s, np.float64), w[piece])
    inner = BatchRows(9, 1, 4, total).rows(slice(1, 3))  # rows of rows: relative to the piece
    assert (inner.start, inner.stop) == (2, 4)
    np.testing.assert_array_equal(inner.random((2, 2, 3), np.float64), want[0][2:4])
    m = dropout_mask((2, 2, 3), np.float64, 0.5, BatchRows(9, 3, 5, total))
    np.testing.assert_array_equal(m, (want[0][3:5] >= 0.5) * 2.0)


def test_batch_rows_errors():
    with pytest.raises(ValueError, match="do not lie in a batch of 4"):
        BatchRows(0, 2, 5, 4)
    with pytest.raises(ValueError, match="3 rows in axis 0"):
        BatchRows(0, 0, 3, 4).random((2, 5), np.float64)


# ---- embedding -----------------------------------------------------------------------------

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
    t, cls = randn(xp, B, P, D), randn(xp, 1, 1, D)
    x, _ = cls_forward(t, cls)
    np.testing.assert_array_equal(backend.to_numpy(x[:, 0]),
                                  np.broadcast_to(backend.to_numpy(cls[0]), (B, D)))
    np.testing.assert_array_equal(backend.to_numpy(x[:, 1:]), backend.to_numpy(t))
    check_pair(cls_forward, cls_backward, (t, cls), randn(xp, B, P + 1, D, seed=11),
               ["tokens", "cls"])
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
    assert sincos_2d(3, 8).dtype == np.float32
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(3, 6)


# ---- loss ----------------------------------------------------------------------------------

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
        np.testing.assert_allclose(backend.to_numpy(dz), (np.exp(logp) - t) / B, rtol=1e-13,
                                   atol=1e-16)


def test_cross_entropy_bad_labels(xp):
    z = randn(xp, 2, 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        cross_entropy_forward(z, xp.asarray([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        cross_entropy_forward(z, xp.asarray([0, 1, 2]))


# ---- MLP and block -------------------------------------------------------------------------

def test_mlp(xp):
    B, N, D, F = 2, 3, 4, 6
    args = (randn(xp, B, N, D), randn(xp, D, F), randn(xp, F), randn(xp, F, D), randn(xp, D))
    for gelu in ("tanh", "erf"):
        check_pair(lambda *a: mlp_forward(*a, gelu=gelu), mlp_backward, args,
                   randn(xp, B, N, D, seed=13), ["x", "w1", "b1", "w2", "b2"])
    f = lambda *a: mlp_forward(*a, dropout=0.3, rng=backend.rng(5))
    _, cache = f(*args)
    assert cache.drop_hidden.shape == (B, N, F) and cache.drop_out.shape == (B, N, D)
    check_pair(f, mlp_backward, args, randn(xp, B, N, D, seed=14), ["x", "w1", "b1", "w2", "b2"])


def _block_params(xp, cfg, D, F):
    shapes = {"norm1.w": (D,), "norm1.b": (D,), "attn.qkv.w": (D, 3 * D), "attn.qkv.b": (3 * D,),
              "attn.proj.w": (D, D), "attn.proj.b": (D,), "ls1.g": (D,), "norm2.w": (D,),
              "norm2.b": (D,), "mlp.fc1.w": (D, F), "mlp.fc1.b": (F,), "mlp.fc2.w": (F, D),
              "mlp.fc2.b": (D,), "ls2.g": (D,)}
    return {k: randn(xp, *shapes[k], seed=i, scale=0.7) for i, k in enumerate(cfg.block_keys())}


@pytest.mark.parametrize("gelu", ["tanh", "erf"])
@pytest.mark.parametrize("rates", [(0.0, 0.0, 0.0), (0.2, 0.3, 0.5)])
def test_block(xp, gelu, rates):
    """The reference block's gradients, without and with dropout, attention dropout and drop
    path (the same masks at every call: a fresh BatchRows of one seed)."""
    B, N, D, H, F = 3, 4, 6, 2, 8
    dropout, attn_dropout, drop_path = rates
    cfg = ViTConfig(dim=D, heads=H, gelu=gelu, eps=1e-6, dropout=dropout, attn_dropout=attn_dropout)
    p, x, dy = _block_params(xp, cfg, D, F), randn(xp, B, N, D), randn(xp, B, N, D, seed=15)
    rng = (lambda: BatchRows(11, 0, B, B)) if any(rates) else (lambda: None)
    fwd = lambda x_: block_forward(x_, p, cfg, drop_path=drop_path, rng=rng())
    _, cache = fwd(x)
    assert isinstance(cache, BlockCache)
    masks = (cache.attn.core.mask, cache.drop_attn, cache.path_attn, cache.mlp.drop_hidden,
             cache.mlp.drop_out, cache.path_mlp)
    if any(rates):
        assert [m.shape for m in masks] == [(B, H, N, N), (B, N, D), (B, 1, 1), (B, N, F),
                                            (B, N, D), (B, 1, 1)]
    else:
        assert masks == (None,) * 6
    assert block_attention(cache).shape == (B, H, N, N)
    dx, g = block_backward(dy, cache)
    assert set(g) == set(p)
    check_grads(lambda: float((fwd(x)[0] * dy).sum()), [x] + list(p.values()),
                [dx] + [g[k] for k in p], ["x"] + list(p), tol=TOL)


@pytest.mark.parametrize("layer_scale", [None, 0.1])
def test_block_is_its_two_residual_lines(xp, layer_scale):
    """block_forward = x + ls1 * mhsa(LN1(x)), then + ls2 * mlp(LN2(.)), computed by the pairs."""
    B, N, D, H, F = 2, 5, 6, 3, 7
    cfg = ViTConfig(dim=D, heads=H, gelu="erf", eps=1e-5, layer_scale=layer_scale)
    p, x = _block_params(xp, cfg, D, F), randn(xp, B, N, D)
    a = mhsa_forward(layernorm_forward(x, p["norm1.w"], p["norm1.b"], 1e-5)[0], p["attn.qkv.w"],
                     p["attn.qkv.b"], p["attn.proj.w"], p["attn.proj.b"], H)[0]
    x1 = x + (a * p["ls1.g"] if layer_scale else a)
    m = mlp_forward(layernorm_forward(x1, p["norm2.w"], p["norm2.b"], 1e-5)[0], p["mlp.fc1.w"],
                    p["mlp.fc1.b"], p["mlp.fc2.w"], p["mlp.fc2.b"], "erf")[0]
    want = x1 + (m * p["ls2.g"] if layer_scale else m)
    y, _ = block_forward(x, p, cfg)
    np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(want))
