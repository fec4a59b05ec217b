"""minivit/kernels/block.py against layers/block.py: the fast encoder block's output, dx and every
parameter gradient equal the reference block's, across GELU forms, LayerScale, dropout with the
same masks, both routes of each LayerNorm's affine, and the first Q query rows alone; and the
fast block's own gradient checks (float64, rel err <= 1e-6)."""
import numpy as np
import pytest

from minivit import ViTConfig, backend
from minivit.kernels import block as fast
from minivit.layers import BatchRows
from minivit.layers import block as reference

from conftest import randn
from kernel_testing import assert_close, block_loss_check, block_params, check_pair

# float64: normalize's means as matrix-vector products, the folded affine (xhat (w W) + (b W + c)
# for (xhat w + b) W + c), q scaled before q k^T, the GELU's sigmoid form: the same function
# rounded in another order, to 1e-12 of each array's scale. float32: 1e-5.
RTOL = {"float64": 1e-12, "float32": 1e-5}
D, H, F = 6, 2, 9            # qkv has 3D = 18 outputs, fc1 F = 9
ROUTES = {(2, 3): (False, False),   # B x N = 6 rows: both affines on the rows (6 < 9, 6 < 18)
          (3, 4): (False, True),    # 12 rows: qkv's on the rows (12 < 18), fc1's folded (12 >= 9)
          (4, 5): (True, True)}     # 20 rows: both folded


def _cfg(gelu="tanh", layer_scale=None, dropout=0.0, attn_dropout=0.0, dtype="float64"):
    return ViTConfig(dim=D, heads=H, gelu=gelu, eps=1e-6, layer_scale=layer_scale,
                     dropout=dropout, attn_dropout=attn_dropout, dtype=dtype)


def _both(x, p, cfg, dy, drop_path=0.0, seed=None, queries=None):
    """Reference and fast block, forward and backward, each with a fresh BatchRows of `seed`
    (None: no masks); dy (B, N, D) is zeroed outside the first `queries` rows for the reference."""
    B = x.shape[0]
    rng = (lambda: None) if seed is None else (lambda: BatchRows(seed, 0, B, B))
    y_ref, c_ref = reference.block_forward(x, p, cfg, drop_path=drop_path, rng=rng())
    y, c = fast.block_forward(x, p, cfg, drop_path=drop_path, rng=rng(), queries=queries)
    d = dy
    if queries is not None:
        d = dy * 0
        d[:, :queries] = dy[:, :queries]
    dx_ref, g_ref = reference.block_backward(d, c_ref)
    dx, g = fast.block_backward(dy if queries is None else dy[:, :queries], c)
    return (y_ref, c_ref, dx_ref, g_ref), (y, c, dx, g)


def _keeps_some_samples(cache) -> None:
    """Drop path left each branch of some sample (else its gradients are all zero: no test)."""
    for m in (cache.path_attn, cache.path_mlp):
        assert m is None or (backend.to_numpy(m) != 0).any(), "every sample dropped: pick a seed"


def _assert_equal_blocks(ref, got, rtol, rows=slice(None)):
    (y_ref, _, dx_ref, g_ref), (y, _, dx, g) = ref, got
    assert y.dtype == y_ref.dtype and dx.dtype == dx_ref.dtype
    assert_close(y, y_ref[:, rows], rtol, "y")
    assert_close(dx, dx_ref, rtol, "dx")
    assert set(g) == set(g_ref)
    for k in g_ref:
        assert g[k].shape == g_ref[k].shape, k
        assert_close(g[k], g_ref[k], rtol, k)


@pytest.mark.parametrize("rows", list(ROUTES))
@pytest.mark.parametrize("rates", [(0.0, 0.0, 0.0), (0.2, 0.3, 0.4)])
@pytest.mark.parametrize("layer_scale", [None, 0.1])
@pytest.mark.parametrize("gelu", ["tanh", "erf"])
def test_fast_block_equals_reference(xp, gelu, layer_scale, rates, rows):
    """Output, dx and every parameter gradient; with dropout, attention dropout and drop path
    the masks come from BatchRows of one seed and are identical to the reference's."""
    B, N = rows
    dropout, attn_dropout, drop_path = rates
    cfg = _cfg(gelu, layer_scale, dropout, attn_dropout)
    p, x, dy = block_params(xp, cfg, D, F), randn(xp, B, N, D), randn(xp, B, N, D, seed=15)
    ref, got = _both(x, p, cfg, dy, drop_path, seed=2 if any(rates) else None)
    c_ref, c = ref[1], got[1]
    _keeps_some_samples(c_ref)
    assert (c.affine1.folded, c.affine2.folded) == ROUTES[rows]
    assert c.queries is None
    masks_ref = (c_ref.drop_attn, c_ref.path_attn, c_ref.mlp.drop_hidden, c_ref.mlp.drop_out,
                 c_ref.path_mlp)
    masks = (c.drop_attn, c.path_attn, c.mlp.drop_hidden, c.mlp.drop_out, c.path_mlp)
    for m_ref, m in zip(masks_ref, masks):
        assert (m is None) == (m_ref is None) == (not any(rates))
        if m is not None:
            np.testing.assert_array_equal(backend.to_numpy(m), backend.to_numpy(m_ref))
    if any(rates) and xp is np:                           # keys first on NumPy
        np.testing.assert_array_equal(c.attn.core.mask.transpose(1, 2, 3, 0), c_ref.attn.core.mask)
    _assert_equal_blocks(ref, got, RTOL["float64"])
    maps = fast.block_attention(c)
    assert maps.shape == (B, H, N, N)
    assert_close(maps, reference.block_attention(c_ref), 1e-13, "maps")


@pytest.mark.parametrize("gelu", ["tanh", "erf"])
def test_fast_block_equals_reference_float32(xp, gelu):
    cfg = _cfg(gelu, 0.1, 0.2, 0.3, dtype="float32")
    p = {k: v.astype("float32") for k, v in block_params(xp, cfg, D, F).items()}
    x, dy = randn(xp, 4, 5, D).astype("float32"), randn(xp, 4, 5, D, seed=15).astype("float32")
    ref, got = _both(x, p, cfg, dy, 0.4, seed=2)
    _keeps_some_samples(ref[1])
    assert got[0].dtype == np.float32
    _assert_equal_blocks(ref, got, RTOL["float32"])


@pytest.mark.parametrize("queries", [1, 2, 5])
@pytest.mark.parametrize("variant", [dict(gelu="tanh"), dict(gelu="erf", layer_scale=0.1)])
@pytest.mark.parametrize("rows", [(2, 5), (4, 5)])
def test_fast_block_queries_equals_reference_rows(variant, queries, rows):
    """queries=Q: the first Q rows of the reference block's output, and the gradients of a dy
    that is zero outside them (the residual reaches only those rows of dx; k and v every row)."""
    B, N = rows
    cfg = _cfg(**variant)
    p, x, dy = block_params(np, cfg, D, F), randn(np, B, N, D), randn(np, B, N, D, seed=15)
    ref, got = _both(x, p, cfg, dy, queries=queries)
    assert got[0].shape == (B, queries, D) and got[1].queries == queries
    _assert_equal_blocks(ref, got, RTOL["float64"], rows=slice(0, queries))
    assert fast.block_attention(got[1]).shape == (B, H, queries, N)


def test_fast_block_queries_with_attention_dropout_and_drop_path():
    """Attention dropout draws its mask in the reference's (B, H, N, N) shape and drop path in
    (B, 1, 1) whatever the rows: with the same BatchRows seed, the reference's rows exactly."""
    B, N, Q = 3, 5, 2
    cfg = _cfg("erf", 0.1, dropout=0.0, attn_dropout=0.3)
    p, x, dy = block_params(np, cfg, D, F), randn(np, B, N, D), randn(np, B, N, D, seed=15)
    ref, got = _both(x, p, cfg, dy, drop_path=0.4, seed=2, queries=Q)
    _keeps_some_samples(ref[1])
    np.testing.assert_array_equal(got[1].path_mlp, ref[1].path_mlp)
    _assert_equal_blocks(ref, got, RTOL["float64"], rows=slice(0, Q))


def test_fast_block_queries_with_dropout_uses_the_reference_masks():
    B, N, Q = 3, 5, 1
    cfg = _cfg("tanh", dropout=0.2, attn_dropout=0.3)
    p, x, dy = block_params(np, cfg, D, F), randn(np, B, N, D), randn(np, B, N, D, seed=15)
    ref, got = _both(x, p, cfg, dy, drop_path=0.4, seed=2, queries=Q)
    _assert_equal_blocks(ref, got, RTOL["float64"], rows=slice(0, Q))


@pytest.mark.parametrize("gelu", ["tanh", "erf"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fast_mlp_equals_reference(xp, gelu, dropout):
    """The fast MLP pair (its cache without fc2's input, remade in backward) against the
    reference's: the same masks from one seed, output and every gradient; and its gradients."""
    B, N = 2, 3
    args = (randn(xp, B, N, D), randn(xp, D, F, seed=1), randn(xp, F, seed=2),
            randn(xp, F, D, seed=3), randn(xp, D, seed=4))
    dy = randn(xp, B, N, D, seed=14)
    rng = (lambda: BatchRows(5, 0, B, B)) if dropout else (lambda: None)
    fwd = lambda *a: fast.mlp_forward(*a, gelu=gelu, dropout=dropout, rng=rng())
    y_ref, c_ref = reference.mlp_forward(*args, gelu=gelu, dropout=dropout, rng=rng())
    y, c = fwd(*args)
    assert c.fc2[0] is None                               # remade in backward
    if dropout:
        for m, m_ref in ((c.drop_hidden, c_ref.drop_hidden), (c.drop_out, c_ref.drop_out)):
            np.testing.assert_array_equal(backend.to_numpy(m), backend.to_numpy(m_ref))
    assert_close(y, y_ref, RTOL["float64"], "y")
    for name, g, g_ref in zip(["dx", "dw1", "db1", "dw2", "db2"], fast.mlp_backward(dy, c),
                              reference.mlp_backward(dy, c_ref)):
        assert_close(g, g_ref, RTOL["float64"], name)
    check_pair(fwd, fast.mlp_backward, args, dy, ["x", "w1", "b1", "w2", "b2"])


# ---- the fast block's own gradient checks --------------------------------------------------

@pytest.mark.parametrize("rates", [(0.0, 0.0, 0.0), (0.2, 0.3, 0.5)])
@pytest.mark.parametrize("rows", [(2, 3), (4, 5)])
def test_fast_block_grads(xp, rates, rows):
    B, N = rows
    dropout, attn_dropout, drop_path = rates
    cfg = _cfg("tanh", None, dropout, attn_dropout)
    p, x, dy = block_params(xp, cfg, D, F), randn(xp, B, N, D), randn(xp, B, N, D, seed=15)
    rng = (lambda: BatchRows(2, 0, B, B)) if any(rates) else (lambda: None)
    fwd = lambda x_: fast.block_forward(x_, p, cfg, drop_path=drop_path, rng=rng())
    _, cache = fwd(x)
    _keeps_some_samples(cache)
    # what the cache leaves out, backward remakes: the qkv and fc1 inputs and weights, fc2's input
    assert cache.attn.qkv[:2] == (None, None) and cache.mlp.fc1[:2] == (None, None)
    assert cache.mlp.fc2[0] is None
    block_loss_check(fwd, fast.block_backward, x, p, dy)


def test_fast_block_cls_only_grads():
    """queries=1 (the last block under CLS pooling): the CLS row alone, and its gradients."""
    B, N = 3, 4
    cfg = _cfg("erf")
    p, x, dy = block_params(np, cfg, D, F), randn(np, B, N, D), randn(np, B, 1, D, seed=17)
    fwd = lambda x_: fast.block_forward(x_, p, cfg, queries=1)
    y, _ = fwd(x)
    np.testing.assert_allclose(y, fast.block_forward(x, p, cfg)[0][:, :1], rtol=1e-13)
    block_loss_check(fwd, fast.block_backward, x, p, dy)


@pytest.mark.parametrize("queries, rates", [(None, (0.0, 0.0)), (2, (0.0, 0.0)),
                                            (None, (0.2, 0.3)), (2, (0.0, 0.3))])
def test_fast_block_layer_scale_grads(queries, rates):
    """LayerScale with all rows or the first two, without and with masks (dropout, drop path)."""
    B, N = 3, 5
    cfg = _cfg("erf", 0.1, dropout=rates[0])
    p = block_params(np, cfg, D, F)
    x, dy = randn(np, B, N, D), randn(np, B, queries or N, D, seed=15)
    rng = (lambda: BatchRows(2, 0, B, B)) if any(rates) else (lambda: None)
    fwd = lambda x_: fast.block_forward(x_, p, cfg, queries=queries, drop_path=rates[1], rng=rng())
    y, cache = fwd(x)
    _keeps_some_samples(cache)
    assert cache.scale_attn is not None and cache.scale_mlp is not None
    if queries and not rates[0]:                          # the first rows of the full block
        whole = fast.block_forward(x, p, cfg, drop_path=rates[1], rng=rng())[0]
        np.testing.assert_allclose(y, whole[:, :queries], rtol=1e-13)
    block_loss_check(fwd, fast.block_backward, x, p, dy)


# ---- the block's halves --------------------------------------------------------------------

@pytest.mark.parametrize("queries", [0, 1, 3])
def test_block_qkv_with_q_for_the_first_rows_only(queries):
    """block_qkv_forward(queries=Q): every row's k and v and the first Q rows' q are those of
    the whole product (the rest of q is not computed, and not read)."""
    B, N = 3, 5
    cfg = _cfg()
    p, x = block_params(np, cfg, D, F), randn(np, B, N, D)
    whole, _ = fast.block_qkv_forward(x, p, cfg)
    some, (_, _, c_lin) = fast.block_qkv_forward(x, p, cfg, queries=queries)
    assert some.shape == whole.shape == (B, N, 3 * D) and c_lin[2] == (B, N, D)
    np.testing.assert_allclose(some[:, :, D:], whole[:, :, D:], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(some[:, :queries, :D], whole[:, :queries, :D], rtol=1e-13, atol=1e-15)


def test_block_qkv_equals_the_reference_qkv():
    """The first half: layernorm(x) @ qkv.w + qkv.b, as the reference computes it."""
    from minivit.layers import layernorm_forward, linear_forward
    for B, N in ROUTES:
        cfg = _cfg()
        p, x = block_params(np, cfg, D, F), randn(np, B, N, D)
        qkv, _ = fast.block_qkv_forward(x, p, cfg)
        h, _ = layernorm_forward(x, p["norm1.w"], p["norm1.b"], cfg.eps)
        assert_close(qkv, linear_forward(h, p["attn.qkv.w"], p["attn.qkv.b"])[0], 1e-13, "qkv")


@pytest.mark.parametrize("rows", [slice(0, 2), slice(2, 5), slice(4, 5)])
def test_block_rows_forward_is_those_rows(rows):
    """The second half for some token rows, given every row's qkv: those rows of the block."""
    B, N = 2, 5
    cfg = _cfg("erf", 0.1)
    p, x = block_params(np, cfg, D, F), randn(np, B, N, D)
    qkv, c_qkv = fast.block_qkv_forward(x, p, cfg)
    y, _ = fast.block_rows_forward(x, qkv, c_qkv, p, cfg, rows=rows)
    assert_close(y, reference.block_forward(x, p, cfg)[0][:, rows], RTOL["float64"], "rows")


# ---- inference: keep=False ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("queries", [None, 1, 3])
@pytest.mark.parametrize("variant", [dict(gelu="tanh"), dict(gelu="erf", layer_scale=0.1)])
def test_fast_block_keeping_nothing_is_the_same_output(variant, queries, streamed, dtype):
    """keep=False (inference): no cache, and the output bit for bit the one keep=True gives
    (the same operations; the GELU overwrites its input instead of writing a new array)."""
    cfg = _cfg(**variant, dtype=dtype)
    p = {k: v.astype(dtype) for k, v in block_params(np, cfg, D, F).items()}
    x = randn(np, 3, 5, D).astype(dtype)
    kept, cache = fast.block_forward(x, p, cfg, queries=queries, streamed=streamed)
    lean, none = fast.block_forward(x, p, cfg, queries=queries, streamed=streamed, keep=False)
    assert none is None and cache is not None
    assert lean.dtype == kept.dtype and np.array_equal(lean, kept)
    other = fast.block_forward(x + 1, p, cfg, queries=queries, streamed=streamed, keep=False)
    assert not np.array_equal(lean, other[0])             # the input matters


def test_fast_block_keeping_nothing_takes_no_masks():
    cfg = _cfg("tanh")
    p, x = block_params(np, cfg, D, F), randn(np, 2, 5, D)
    with pytest.raises(ValueError, match="inference"):
        fast.block_forward(x, p, cfg, rng=BatchRows(0, 0, 2, 2), keep=False)


@pytest.mark.parametrize("gelu", ["tanh", "erf"])
def test_fast_block_keeping_nothing_holds_less(gelu):
    """What keep=False is for: the block's peak of allocated memory (tracemalloc sees NumPy's
    arrays) well below the cached block's, which holds qkv, the attention output and three
    activations of the MLP's width at once (a wide MLP and few tokens, so that the attention's
    scores are small beside them)."""
    import tracemalloc
    cfg = ViTConfig(dim=64, heads=4, mlp_ratio=16.0, gelu=gelu, dtype="float32")
    p = {k: v.astype("float32") for k, v in block_params(np, cfg, 64, 1024).items()}
    x = randn(np, 32, 64, 64).astype("float32")

    def peak(keep: bool) -> int:
        tracemalloc.start()
        try:
            y, c = fast.block_forward(x, p, cfg, keep=keep)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    hidden = x.size * 16 * 4                              # one (B, N, F) float32 activation
    assert peak(False) < 2 * hidden < 2.5 * hidden < peak(True)
