"""The reference pairs the checkpoint families add (float64 finite differences, rel err <= 1e-6):
LayerScale, token insertion (CLS, distillation, registers), the block with LayerScale, and the
head's paths (fc_norm, distilled, headless). The fast block's LayerScale with query rows is in
tests/kernels/test_block_kernel.py."""
import numpy as np
import pytest

from minivit import ViTConfig, backend
from minivit.gradcheck import check_grads
from minivit.layers import (BatchRows, block_backward, block_forward, head_backward, head_forward,
                            insert_tokens_backward, insert_tokens_forward, layer_scale_backward,
                            layer_scale_forward)

from conftest import randn

TOL = 1e-6


def check_pair(forward, backward, inputs, dy, names):
    out, cache = forward(*inputs)
    assert out.shape == dy.shape
    grads = backward(dy, cache)
    assert len(grads) == len(inputs)
    check_grads(lambda: float((forward(*inputs)[0] * dy).sum()), inputs, grads, names, tol=TOL)


def test_layer_scale(xp):
    x, g = randn(xp, 3, 4, 5), randn(xp, 5, seed=2)
    y, _ = layer_scale_forward(x, g)
    np.testing.assert_allclose(backend.to_numpy(y), backend.to_numpy(x * g), rtol=0)
    check_pair(layer_scale_forward, layer_scale_backward, (x, g), randn(xp, 3, 4, 5, seed=3),
               ["x", "g"])


@pytest.mark.parametrize("at", [0, 1, 3])
def test_insert_tokens(xp, at):
    B, M, R, D = 3, 4, 2, 5
    x, tok = randn(xp, B, M, D), randn(xp, 1, R, D, seed=4)
    y, _ = insert_tokens_forward(x, tok, at)
    yh, xh, th = (backend.to_numpy(a) for a in (y, x, tok))
    assert y.shape == (B, M + R, D)
    assert (yh[:, :at] == xh[:, :at]).all() and (yh[:, at + R:] == xh[:, at:]).all()
    assert (yh[:, at:at + R] == th).all()
    check_pair(lambda a, t: insert_tokens_forward(a, t, at), insert_tokens_backward, (x, tok),
               randn(xp, B, M + R, D, seed=5), ["x", "tokens"])


def _block_params(xp, D, F, scaled):
    shapes = {"norm1.w": (D,), "norm1.b": (D,), "attn.qkv.w": (D, 3 * D), "attn.qkv.b": (3 * D,),
              "attn.proj.w": (D, D), "attn.proj.b": (D,), "ls1.g": (D,), "norm2.w": (D,),
              "norm2.b": (D,), "mlp.fc1.w": (D, F), "mlp.fc1.b": (F,), "mlp.fc2.w": (F, D),
              "mlp.fc2.b": (D,), "ls2.g": (D,)}
    if not scaled:
        shapes = {k: s for k, s in shapes.items() if not k.startswith("ls")}
    return {k: randn(xp, *s, seed=i, scale=0.7) for i, (k, s) in enumerate(shapes.items())}


@pytest.mark.parametrize("gelu", ["tanh", "erf"])
@pytest.mark.parametrize("rates", [(0.0, 0.0, 0.0), (0.2, 0.1, 0.3)])
def test_block_layer_scale(xp, gelu, rates):
    """The reference block with LayerScale: ls1.g and ls2.g get their gradients, without and with
    dropout, attention dropout and drop path (fixed masks: a fresh BatchRows of one seed)."""
    B, N, D, H, F = 3, 5, 6, 2, 8
    p = _block_params(xp, D, F, scaled=True)
    x, dy = randn(xp, B, N, D), randn(xp, B, N, D, seed=15)
    cfg = ViTConfig(dim=D, heads=H, gelu=gelu, layer_scale=0.1, dropout=rates[0],
                    attn_dropout=rates[1])
    assert cfg.block_keys() == tuple(p)
    rng = (lambda: BatchRows(11, 0, B, B)) if any(rates) else (lambda: None)
    fwd = lambda x_: block_forward(x_, p, cfg, drop_path=rates[2], rng=rng())
    y, cache = fwd(x)
    assert cache.scale_attn is not None and cache.scale_mlp is not None
    if not any(rates):                                    # the branches, scaled
        plain = {k: v for k, v in p.items() if not k.startswith("ls")}
        y0, c0 = block_forward(x, plain, ViTConfig(dim=D, heads=H, gelu=gelu))
        assert c0.scale_attn is None and c0.scale_mlp is None
        assert not np.allclose(backend.to_numpy(y), backend.to_numpy(y0))
    dx, g = block_backward(dy, cache)
    assert set(g) == set(p)
    check_grads(lambda: float((fwd(x)[0] * dy).sum()), [x] + list(p.values()),
                [dx] + [g[k] for k in p], ["x"] + list(p), tol=TOL)


HEADS = {
    "fc_norm": dict(pool="mean", fc_norm=True, num_registers=2),
    "mean_registers": dict(pool="mean", num_registers=2),
    "distilled": dict(distilled=True),
    "distilled_headless": dict(distilled=True, num_classes=0),
    "headless": dict(num_classes=0),
    "headless_pooler": dict(num_classes=0, representation_size=6),
    "no_class_token": dict(class_token=False, pool="mean", fc_norm=True),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_head_variants(xp, name):
    cfg = ViTConfig(**{**dict(image_size=8, patch_size=4, dim=5, heads=1, num_classes=3,
                              dtype="float64"), **HEADS[name]})
    B, N, D = 3, cfg.num_tokens, cfg.dim
    shapes = {k: s for k, s in cfg.param_shapes().items()
              if k.startswith(("norm.", "pre_logits.", "head"))}
    p = {k: randn(xp, *s, seed=i, scale=0.7) + (1.0 if k == "norm.w" else 0.0)
         for i, (k, s) in enumerate(shapes.items())}
    t, dy = randn(xp, B, N, D), randn(xp, B, cfg.num_outputs, seed=9)
    out, cache = head_forward(t, p, cfg)
    assert out.shape == (B, cfg.num_outputs)
    dt, g = head_backward(dy, cache)
    assert set(g) == set(p)
    check_grads(lambda: float((head_forward(t, p, cfg)[0] * dy).sum()), [t] + list(p.values()),
                [dt] + [g[k] for k in p], ["tokens"] + list(p), tol=TOL)


def test_head_fc_norm_is_timm_average_then_norm(xp):
    """fc_norm: LayerNorm(mean of the patch tokens), the prefix tokens left out."""
    cfg = ViTConfig(image_size=8, patch_size=4, dim=5, heads=1, num_classes=0, pool="mean",
                    fc_norm=True, num_registers=2, dtype="float64")
    t = backend.to_numpy(randn(xp, 2, cfg.num_tokens, 5))
    w, b = np.linspace(0.5, 1.5, 5), np.linspace(-1, 1, 5)
    out, _ = head_forward(backend.asarray(t), {"norm.w": backend.asarray(w),
                                               "norm.b": backend.asarray(b)}, cfg)
    m = t[:, 3:].mean(1)
    want = (m - m.mean(-1, keepdims=True)) / np.sqrt(m.var(-1, keepdims=True) + 1e-6) * w + b
    np.testing.assert_allclose(backend.to_numpy(out), want, rtol=1e-13)
