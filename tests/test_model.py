"""The whole ViT: finite-difference checks of every parameter, shapes, init, and every bad input."""
import contextlib
import dataclasses

import numpy as np
import pytest

from minivit import ViT, ViTConfig, backend
from minivit.config import HEAD_KEYS
from minivit.layers import BatchRows
from minivit.parallel import threads
from minivit.training import loop as train
from minivit.gradcheck import check_grads
from minivit.layers import cross_entropy_backward, cross_entropy_forward
from minivit.optim import AdamW, clip_grad_norm

from conftest import randn

pytestmark = pytest.mark.usefixtures("engine")   # every test with the kernels on, then off

SMALL = dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2, heads=2,
             mlp_ratio=1.5, dtype="float64")


def randomize(model, seed=0):
    """Random non-degenerate values for every parameter (biases and LayerNorm too)."""
    rng = np.random.default_rng(seed)
    for k, v in model.params.items():
        v[...] = backend.asarray(rng.standard_normal(v.shape) * (0.5 if v.ndim > 1 else 0.3)
                                 + (1.0 if "norm" in k and k.endswith(".w") else 0.0))


def check_model(xp, cfg, B=3, seed_masks=None):
    model = ViT(cfg, seed=0)
    randomize(model)
    x = randn(xp, B, cfg.in_channels, cfg.image_size, cfg.image_size, seed=1)
    labels = xp.asarray(np.arange(B) % cfg.num_classes)

    def loss():
        if seed_masks is not None:
            model.rng = np.random.default_rng(seed_masks)   # the same dropout masks every call
        return cross_entropy_forward(model.forward(x, train=True), labels, 0.1)[0]

    if seed_masks is not None:
        model.rng = np.random.default_rng(seed_masks)
    logits = model.forward(x, train=True)
    _, cache = cross_entropy_forward(logits, labels, 0.1)
    dx = model.backward(cross_entropy_backward(cache))
    names = list(model.params)
    errs = check_grads(loss, [x] + [model.params[k] for k in names],
                       [dx] + [model.grads[k] for k in names], ["x"] + names, tol=1e-6,
                       max_coords=60, directions=1)
    assert set(errs) == {"x", *model.params}
    return model


@pytest.mark.parametrize("pool, gelu", [("cls", "tanh"), ("mean", "erf"), ("cls", "erf"),
                                        ("mean", "tanh")])
def test_model_grads(xp, pool, gelu, engine):
    if engine == "reference" and (pool, gelu) in (("cls", "erf"), ("mean", "tanh")):
        pytest.skip("the reference engine's pooling and GELU are each checked by the other two "
                    "pairs (the fast engine checks all four)")
    check_model(xp, ViTConfig(**SMALL, pool=pool, gelu=gelu))


def test_model_grads_sincos_prelogits(xp):
    model = check_model(xp, ViTConfig(**SMALL, pos_embed="sincos", representation_size=5))
    assert "pos_embed" not in model.params and "pre_logits.w" in model.params


def test_model_grads_with_dropout_and_drop_path(xp):
    cfg = ViTConfig(**SMALL, dropout=0.2, attn_dropout=0.2, drop_path=0.3)
    check_model(xp, dataclasses.replace(cfg, depth=3), B=4, seed_masks=5)


def test_param_names_and_shapes():
    cfg = ViTConfig(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64, depth=2,
                    heads=4, mlp_ratio=2.0)
    m = ViT(cfg)
    D, F, N = 64, 128, 17
    want = {"patch_embed.w": (49, D), "patch_embed.b": (D,), "cls_token": (1, 1, D),
            "pos_embed": (1, N, D), "norm.w": (D,), "norm.b": (D,), "head.w": (D, 10), "head.b": (10,)}
    for i in range(2):
        b = f"blocks.{i}."
        want.update({b + "norm1.w": (D,), b + "norm1.b": (D,), b + "attn.qkv.w": (D, 3 * D),
                     b + "attn.qkv.b": (3 * D,), b + "attn.proj.w": (D, D), b + "attn.proj.b": (D,),
                     b + "norm2.w": (D,), b + "norm2.b": (D,), b + "mlp.fc1.w": (D, F),
                     b + "mlp.fc1.b": (F,), b + "mlp.fc2.w": (F, D), b + "mlp.fc2.b": (D,)})
    assert {k: v.shape for k, v in m.params.items()} == want
    assert all(v.dtype == np.float32 for v in m.params.values())
    assert m.grads.keys() == m.params.keys()


def test_init_statistics():
    m = ViT(ViTConfig(dim=128, depth=1), seed=3)
    w = m.params["blocks.0.mlp.fc1.w"]
    assert abs(w.std() - 0.0176) < 0.002                  # std of N(0, .02^2) truncated at 2 std
    assert np.abs(w).max() <= 0.04 + 1e-7
    assert (m.params["blocks.0.attn.qkv.b"] == 0).all() and (m.params["norm.w"] == 1).all()
    same = ViT(ViTConfig(dim=128, depth=1), seed=3)
    assert all((same.params[k] == v).all() for k, v in m.params.items())


def test_forward_shapes_and_attention(xp):
    cfg = ViTConfig(**SMALL)
    m = ViT(cfg)
    x = randn(xp, 2, 2, 8, 8)
    logits, attn = m.forward(x, return_attention=True)
    assert logits.shape == (2, 3) and len(attn) == 2
    assert attn[0].shape == (2, 2, 5, 5)
    np.testing.assert_allclose(backend.to_numpy(attn[1].sum(-1)), 1.0, rtol=1e-12)


def test_eval_caches_nothing_and_backward_needs_train(xp):
    m = ViT(ViTConfig(**SMALL))
    x = randn(xp, 2, 2, 8, 8)
    m.forward(x, train=False)
    assert m._saved is None
    assert m.forward_features(x).shape == (2, 5, 8)
    with pytest.raises(ValueError, match="forward\\(x, train=True\\)"):
        m.backward(xp.zeros((2, 3)))
    m.forward(x, train=True)
    with pytest.raises(ValueError, match="expected \\(2, 3\\)"):
        m.backward(xp.zeros((2, 4)))
    m.forward(x, train=True)
    m.backward(xp.ones((2, 3)))
    with pytest.raises(ValueError, match="uses them up"):
        m.backward(xp.ones((2, 3)))


def test_eval_is_deterministic_train_with_dropout_is_not():
    m = ViT(ViTConfig(**SMALL, dropout=0.5))
    x = randn(np, 2, 2, 8, 8)
    assert (m.forward(x) == m.forward(x)).all()
    assert not (m.forward(x, train=True) == m.forward(x, train=True)).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=10, heads=4), "dim=10 is not divisible by heads=4"),
    (dict(image_size=28, patch_size=5), "not divisible by patch_size=5"),
    (dict(pool="max"), "pool='max' is not one of"),
    (dict(gelu="relu"), "gelu='relu'"),
    (dict(dropout=1.0), "dropout=1.0 must be in"),
    (dict(depth=0), "depth must be a positive integer"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**kwargs)


@pytest.mark.parametrize("x,err,match", [
    (np.zeros((1, 28, 28), np.float32), ValueError, "ndim 4"),
    (np.zeros((2, 3, 28, 28), np.float32), ValueError, "expected 1 channel"),
    (np.zeros((2, 1, 32, 32), np.float32), ValueError, "expected 28x28 images, got 32x32"),
    (np.zeros((2, 1, 28, 28), np.uint8), TypeError, "got uint8; convert"),
    (np.zeros((2, 1, 28, 28), np.float16), TypeError, "got float16"),
    (np.full((2, 1, 28, 28), np.nan, np.float32), ValueError, "NaN or inf"),
    (np.full((2, 1, 28, 28), np.inf, np.float32), ValueError, "NaN or inf"),
    ([[1.0]], TypeError, "expected an array"),
])
def test_bad_input(x, err, match):
    with pytest.raises(err, match=match):
        ViT(ViTConfig(depth=1)).forward(x)


def test_float64_input_is_cast_to_model_dtype():
    m = ViT(ViTConfig(depth=1))
    assert m.forward(np.zeros((2, 1, 28, 28))).dtype == np.float32


def test_gpu_request_without_cupy_is_clear(monkeypatch):
    if backend.gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="pip install|GPU"):
        backend.use("gpu")
    assert backend.xp() is np
    with pytest.raises(ValueError, match="unknown backend"):
        backend.use("tpu")


def test_frozen_backbone_backward(xp):
    """With everything before the head frozen (model.freeze): the same logits and head
    gradients as a full backward (dropout masks included), zeros for the rest, no dx; and
    train_step on that model reaches the parameters of a full backward with a frozen optimizer."""
    cfg = ViTConfig(**{**SMALL, "representation_size": 5, "dropout": 0.2, "drop_path": 0.1})
    full, head = ViT(cfg, seed=0), ViT(cfg, seed=0)
    randomize(full), randomize(head)
    frozen = [k for k in head.params if k not in HEAD_KEYS]
    head.freeze(frozen)
    assert not head.backbone_trainable() and full.backbone_trainable()
    x = randn(xp, 32, cfg.in_channels, cfg.image_size, cfg.image_size, seed=1)  # 2 chunks on NumPy
    labels = xp.asarray(np.arange(32) % cfg.num_classes)
    z_full = full.forward(x, train=True)
    z_head = head.forward(x, train=True)
    np.testing.assert_array_equal(backend.to_numpy(z_full), backend.to_numpy(z_head))
    d = cross_entropy_backward(cross_entropy_forward(z_full, labels, 0.1)[1])
    assert full.backward(d) is not None and head.backward(d) is None
    assert head.trainable_keys() == ["norm.w", "norm.b", "pre_logits.w", "pre_logits.b",
                                     "head.w", "head.b"]
    for k in full.params:
        expect = 0 * full.grads[k] if k in frozen else full.grads[k]
        np.testing.assert_array_equal(backend.to_numpy(head.grads[k]), backend.to_numpy(expect))
        assert k not in frozen or float(abs(full.grads[k]).max()) > 0

    opts = train.TrainOptions(lr=1e-2, clip=1.0, smoothing=0.1)
    for model in (full, head):
        model.rng = np.random.default_rng(3)
    opt_full = AdamW(full.params, lr=1e-2, frozen=frozen)
    opt_head = AdamW(head.params, lr=1e-2, frozen=head.frozen)
    for _ in range(2):
        masks = BatchRows(int(full.rng.integers(2 ** 63)), 0, 32, 32)   # as train_step draws
        logits = full.forward(x, train=True, masks=masks)                 # the general path
        full.backward(cross_entropy_backward(cross_entropy_forward(logits, labels, 0.1)[1]))
        clip_grad_norm({k: g for k, g in full.grads.items() if k not in frozen}, 1.0)
        opt_full.step(full.grads, lr=1e-2)
        train.train_step(head, opt_head, x, labels, 1e-2, opts)
    k = "blocks.0.attn.qkv.w"                             # train_step kept no backbone caches
    assert float(abs(head.grads[k]).max()) == 0 and float(abs(full.grads[k]).max()) > 0
    for k in full.params:
        np.testing.assert_array_equal(backend.to_numpy(head.params[k]),
                                      backend.to_numpy(full.params[k]))


def test_freeze_checks_names_and_head_keys():
    m = ViT(ViTConfig(**SMALL, distilled=True))
    assert m.head_keys() == ["head.w", "head.b", "head_dist.w", "head_dist.b"]
    with pytest.raises(ValueError, match="not parameters"):
        m.freeze(["head.w", "nope"])
    m.freeze(set(m.params) - set(m.head_keys()))
    assert m.trainable_keys() == m.head_keys()
    m.freeze(())
    assert m.trainable_keys() == list(m.params)


def images(B, C, S, seed=1):
    return np.random.default_rng(seed).standard_normal((B, C, S, S))


def test_set_image_size_learned_and_sincos():
    model = ViT(ViTConfig(**SMALL))
    randomize(model)
    old = model.params["pos_embed"].copy()
    model.set_image_size(16)
    assert model.params["pos_embed"].shape == (1, 17, 8)
    assert np.array_equal(model.params["pos_embed"][:, 0], old[:, 0])
    x = images(2, 2, 16)
    logits = model.forward(x, train=True)
    model.backward(np.ones_like(logits))
    assert model.grads["pos_embed"].shape == (1, 17, 8)
    sc = ViT(ViTConfig(**SMALL, pos_embed="sincos")).set_image_size(12)
    assert sc.pos_table.shape == (1, 10, 8) and sc.forward(images(1, 2, 12)).shape == (1, 3)


def test_reset_head_zero_init_drops_pre_logits():
    model = ViT(ViTConfig(**SMALL, representation_size=5))
    randomize(model)
    before = {k: v.copy() for k, v in model.params.items()}
    model.reset_head(7)
    assert model.config.num_classes == 7 and model.config.representation_size is None
    assert "pre_logits.w" not in model.params and "pre_logits.w" not in model.grads
    assert model.params["head.w"].shape == (8, 7) and model.params["head.b"].shape == (7,)
    assert not model.params["head.w"].any() and not model.params["head.b"].any()
    assert list(model.params) == list(model.grads)
    assert list(model.params)[-2:] == ["head.w", "head.b"]
    assert all(np.array_equal(model.params[k], before[k]) for k in model.params
               if not k.startswith("head."))
    x = images(3, 2, 8)
    logits = model.forward(x, train=True)
    assert logits.shape == (3, 7) and not logits.any()                  # zero head: zero logits
    _, cache = cross_entropy_forward(logits, np.array([0, 3, 6]))
    model.backward(cross_entropy_backward(cache))
    assert {k: v.shape for k, v in model.grads.items()} == \
        {k: v.shape for k, v in model.params.items()}
    assert model.grads["head.w"].any()


def test_reset_head_keeps_pre_logits():
    model = ViT(ViTConfig(**SMALL, representation_size=5))
    randomize(model)
    pre = model.params["pre_logits.w"].copy()
    model.reset_head(4, keep_pre_logits=True)
    assert model.config.representation_size == 5 and model.config.num_classes == 4
    assert np.array_equal(model.params["pre_logits.w"], pre)
    assert model.params["head.w"].shape == (5, 4) and not model.params["head.w"].any()
    assert model.forward(images(2, 2, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_head(0)


def test_dropout_masks_do_not_depend_on_the_split(monkeypatch):
    """With dropout, attention dropout and drop path, two halves of a batch run with their rows'
    masks (as two data-parallel processes would) give the rows of the whole batch exactly, and their
    summed gradients are the whole batch's; the thread split changes nothing either."""
    monkeypatch.setattr(threads, "MIN_PIECE", 1)
    cfg = ViTConfig(**SMALL, dropout=0.2, attn_dropout=0.3, drop_path=0.4, pool="mean")
    x, dl = randn(np, 6, 2, 8, 8), randn(np, 6, 3, seed=2)
    whole, halves = ViT(cfg, seed=1), [ViT(cfg, seed=1), ViT(cfg, seed=1)]
    for workers in (1, 2):
        for m in [whole] + halves:
            m.runtime = threads.Runtime(workers=workers)
        logits = whole.forward(x, train=True, masks=BatchRows(77, 0, 6, 6))
        whole.backward(dl)
        parts = [m.forward(x[3 * r:3 * r + 3], train=True, masks=BatchRows(77, 3 * r, 3 * r + 3, 6))
                 for r, m in enumerate(halves)]
        for r, m in enumerate(halves):
            m.backward(dl[3 * r:3 * r + 3])
        np.testing.assert_allclose(np.concatenate(parts), logits, rtol=1e-13)
        np.testing.assert_allclose(halves[0].grads.flat + halves[1].grads.flat, whole.grads.flat,
                                   rtol=1e-11, atol=1e-14)


def test_the_mnist_model_trains_at_its_real_batch_size():
    """The shapes of a real step (the default MNIST model, batch 128: pieces of 64 images, a
    139,264-number GELU input each) through forward and backward in float32, as the README's
    training command runs them; the small gradient-checked shapes do not reach every size
    rule (a chunked GELU once failed only here)."""
    cfg = ViTConfig(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64, depth=6,
                    heads=4, mlp_ratio=2.0, dropout=0.1, drop_path=0.1)
    m = ViT(cfg)
    x = np.random.default_rng(0).standard_normal((128, 1, 28, 28)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, 128)
    loss, c = cross_entropy_forward(m.forward(x, train=True), y)
    m.backward(cross_entropy_backward(c))
    assert np.isfinite(loss) and np.isfinite(m.grads.flat).all()
    assert np.count_nonzero(m.grads.flat) > 0.99 * m.grads.flat.size


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_fast_and_reference_engines_agree(pool):
    """The same model, step and masks with the kernels on and off: the same logits, dx and
    gradients to float64 rounding (dropout, attention dropout and drop path included, and the
    class rows alone in the last block under CLS pooling)."""
    from minivit import kernels
    cfg = ViTConfig(**{**SMALL, "depth": 3}, pool=pool, dropout=0.2, attn_dropout=0.2,
                    drop_path=0.3)
    m = ViT(cfg, seed=0)
    randomize(m)
    x, dl = randn(np, 4, 2, 8, 8), randn(np, 4, 3, seed=2)
    runs = []
    for on in (True, False):
        with (contextlib.nullcontext() if on else kernels.disabled()):
            logits = m.forward(x, train=True, masks=BatchRows(5, 0, 4, 4))
            dx = m.backward(dl)
        runs.append((logits, dx, m.grads.flat.copy()))
    for got, want in zip(runs[0], runs[1]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
