"""The whole ViT in the shapes of the released checkpoint families (config.py's later fields):
float64 finite-difference checks of the input and every parameter, the token layout, the
surgery (reset_head, set_image_size) and the configs that are refused."""
import dataclasses

import numpy as np
import pytest

from minivit import ViT, ViTConfig, backend
from minivit.gradcheck import check_grads
from minivit.layers import cross_entropy_backward, cross_entropy_forward

from conftest import images, randn

pytestmark = pytest.mark.usefixtures("engine")   # with the kernels on, then off

SMALL = dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2, heads=2,
             mlp_ratio=1.5, dtype="float64", gelu="erf")
VARIANTS = {
    "deit3": dict(layer_scale=0.1, pos_embed_cls=False),                 # timm deit3
    "deit_distilled": dict(distilled=True),
    "dinov2": dict(layer_scale=0.5, num_classes=0),                       # features
    "dinov2_registers": dict(layer_scale=0.5, num_registers=2, num_classes=0),
    "timm_registers": dict(num_registers=3, pos_embed_cls=False),         # reg4 no_embed_class
    "timm_fc_norm": dict(pool="mean", fc_norm=True),                      # MAE / DINO features
    "vit_model_pooler": dict(num_classes=0, representation_size=5),       # ViTModel's tanh pooler
    "no_class_token": dict(class_token=False, pool="mean", fc_norm=True, num_registers=1),
    "distilled_sincos": dict(distilled=True, pos_embed="sincos", pos_embed_cls=False),
}


def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for k, v in model.params.items():
        one = "norm" in k and k.endswith(".w")
        v[...] = backend.asarray(rng.standard_normal(v.shape) * (0.5 if v.ndim > 1 else 0.3)
                                 + (1.0 if one else 0.0))


def loss_and_grad(model, x, labels, dout):
    """Cross-entropy of the logits, or <features, dout> for a headless model."""
    out = model.forward(x, train=True)
    if model.config.num_classes:
        loss, cache = cross_entropy_forward(out, labels, 0.1)
        return loss, cross_entropy_backward(cache)
    return float((out * dout).sum()), dout


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_grads(xp, name):
    cfg = ViTConfig(**{**SMALL, **VARIANTS[name]})
    model = ViT(cfg, seed=0)
    randomize(model)
    B = 3
    x = randn(xp, B, cfg.in_channels, cfg.image_size, cfg.image_size, seed=1)
    labels = xp.asarray(np.arange(B) % max(cfg.num_classes, 1))
    dout = randn(xp, B, cfg.num_outputs, seed=2)
    _, d = loss_and_grad(model, x, labels, dout)
    dx = model.backward(d)
    names = list(model.params)
    errs = check_grads(lambda: loss_and_grad(model, x, labels, dout)[0],
                       [x] + [model.params[k] for k in names],
                       [dx] + [model.grads[k] for k in names], ["x"] + names, tol=1e-6,
                       max_coords=24, directions=1)
    assert set(errs) == {"x", *model.params}


def test_variant_grads_with_dropout_and_drop_path():
    cfg = ViTConfig(**{**SMALL, **VARIANTS["dinov2_registers"], "dropout": 0.2,
                       "attn_dropout": 0.2, "drop_path": 0.3, "depth": 3})
    model = ViT(cfg, seed=0)
    randomize(model)
    x, dout = images(4, 2, 8), randn(np, 4, 8, seed=2)

    def loss():
        model.rng = np.random.default_rng(5)                        # the same masks every call
        return float((model.forward(x, train=True) * dout).sum())

    loss()
    model.rng = np.random.default_rng(5)
    model.forward(x, train=True)
    dx = model.backward(dout)
    names = list(model.params)
    check_grads(loss, [x] + [model.params[k] for k in names],
                [dx] + [model.grads[k] for k in names], ["x"] + names, tol=1e-6, max_coords=16,
                directions=1)


def test_param_table_of_the_families():
    s = ViTConfig(**SMALL, distilled=True, num_registers=2, layer_scale=1e-5).param_shapes()
    assert s["dist_token"] == (1, 1, 8) and s["reg_tokens"] == (1, 2, 8)
    assert s["pos_embed"] == (1, 2 + 4, 8)                # CLS, dist, 2x2 patches; no registers
    assert s["head_dist.w"] == (8, 3) and s["blocks.1.ls2.g"] == (8,)
    assert list(s)[:6] == ["patch_embed.w", "patch_embed.b", "cls_token", "dist_token",
                           "reg_tokens", "pos_embed"]
    assert ViTConfig(**SMALL, pos_embed_cls=False).param_shapes()["pos_embed"] == (1, 4, 8)
    headless = ViTConfig(**{**SMALL, "num_classes": 0}).param_shapes()
    assert "head.w" not in headless and list(headless)[-2:] == ["norm.w", "norm.b"]
    cfg = ViTConfig(**SMALL, num_registers=3, distilled=True)
    assert (cfg.num_prefix_tokens, cfg.num_tokens, cfg.num_pos_prefix) == (5, 9, 2)
    old = ViTConfig(**SMALL)                               # today's models are unchanged
    assert (old.num_tokens, old.num_outputs, old.block_keys()[-1]) == (5, 3, "mlp.fc2.b")


def test_token_layout_and_layer_scale_init():
    """[cls, dist, registers, patches]: the registers carry no position; with pos_embed_cls=False
    the class tokens carry none either; LayerScale starts at cfg.layer_scale."""
    cfg = ViTConfig(**{**SMALL, "distilled": True, "num_registers": 2, "layer_scale": 0.25})
    m = ViT(cfg)
    randomize(m)
    assert float(ViT(cfg).params["blocks.0.ls1.g"].min()) == 0.25
    x = images(2, 2, 8)
    t, _ = m.embed_forward(x)
    p = m.params
    pos = p["pos_embed"][0]
    np.testing.assert_allclose(t[:, 0], np.broadcast_to(p["cls_token"][0, 0] + pos[0], (2, 8)))
    np.testing.assert_allclose(t[:, 1], np.broadcast_to(p["dist_token"][0, 0] + pos[1], (2, 8)))
    np.testing.assert_allclose(t[:, 2:4], np.broadcast_to(p["reg_tokens"][0], (2, 2, 8)))
    m2 = ViT(dataclasses.replace(cfg, pos_embed_cls=False))
    t2, _ = m2.embed_forward(x)
    np.testing.assert_allclose(t2[:, 0], np.broadcast_to(m2.params["cls_token"][0, 0], (2, 8)))


def test_headless_forward_backward_and_reset_head():
    cfg = ViTConfig(**{**SMALL, "num_classes": 0, "distilled": True})
    m = ViT(cfg)
    randomize(m)
    feats = m.forward(images(3, 2, 8), train=True)
    assert feats.shape == (3, 8)
    with pytest.raises(ValueError, match=r"expected \(3, 8\)"):
        m.backward(np.zeros((3, 3)))
    m.reset_head(4)
    assert m.config.num_classes == 4 and not m.params["head_dist.w"].any()
    assert m.params["head.w"].shape == m.params["head_dist.w"].shape == (8, 4)
    assert "head_dist.w" in m.head_keys() and not m.forward(images(2, 2, 8)).any()


@pytest.mark.parametrize("extra", [dict(distilled=True), dict(pos_embed_cls=False),
                                   dict(num_registers=2)])
def test_set_image_size_keeps_class_rows(extra):
    m = ViT(ViTConfig(**SMALL, **extra))
    randomize(m)
    T = m.config.num_pos_prefix
    old = m.params["pos_embed"].copy()
    m.set_image_size(12, "bicubic", align_corners=False, antialias=True)
    assert m.params["pos_embed"].shape == (1, T + 9, 8)
    assert np.array_equal(m.params["pos_embed"][:, :T], old[:, :T])
    assert m.forward(images(2, 2, 12)).shape == (2, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(class_token=False), "class_token=False"),
    (dict(distilled=True, pool="mean"), "distilled=True"),
    (dict(distilled=True, representation_size=4), "distilled=True"),
    (dict(fc_norm=True), "fc_norm=True"),
    (dict(layer_scale=0.0), "layer_scale"),
    (dict(num_registers=-1), "num_registers must be a non-negative integer"),
    (dict(num_classes=-1), "num_classes must be a non-negative integer"),
])
def test_bad_family_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViTConfig(**{**SMALL, **kwargs})
