"""The whole model against an independent PyTorch ViT on the same weights, in float64 (as llm.c's test_gpt2).

Checks logits, loss, input gradient, every parameter gradient and every layer's attention
probabilities to a relative error of 1e-10 (max|a - b| / max|b|), and the reference's options
that the benchmarks time with (sdpa, float32, dropout in train mode). Skipped when torch is missing.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from minivit import ViT, ViTConfig, backend  # noqa: E402
from minivit.layers.loss import cross_entropy_backward, cross_entropy_forward  # noqa: E402
from torch_vit import TorchViT, sincos_pos_embed  # noqa: E402

pytestmark = pytest.mark.usefixtures("engine")   # with the kernels on, then off

TOL = 1e-10
BASE = dict(image_size=8, patch_size=4, in_channels=1, num_classes=5, dim=16, depth=2, heads=2,
            mlp_ratio=2.0)
# (id, config overrides, batch size, label smoothing)
CASES = [
    ("cls-tanh", dict(pool="cls", gelu="tanh"), 3, 0.0),
    ("cls-erf", dict(pool="cls", gelu="erf"), 3, 0.1),
    ("mean-tanh", dict(pool="mean", gelu="tanh"), 3, 0.1),
    ("mean-erf", dict(pool="mean", gelu="erf"), 2, 0.0),
    ("sincos-cls", dict(pos_embed="sincos", pool="cls", gelu="tanh"), 3, 0.0),
    ("sincos-mean-erf", dict(pos_embed="sincos", pool="mean", gelu="erf", depth=3), 2, 0.2),
    ("repr-size", dict(representation_size=12, pool="cls", gelu="tanh"), 3, 0.1),
    ("rgb-12-4", dict(image_size=12, patch_size=4, in_channels=3, dim=24, heads=4, depth=3,
                      mlp_ratio=1.5, num_classes=7, pool="mean", gelu="erf"), 4, 0.05),
    ("rgb-12-3-batch", dict(image_size=12, patch_size=3, in_channels=3, dim=12, heads=3,
                            num_classes=4), 37, 0.0),
]
IDS = [c[0] for c in CASES]


def relerr(a, b) -> float:
    """max|a - b| / max|b|, with b the torch reference; refuses an all-zero reference."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} vs torch {b.shape}"
    scale = np.abs(b).max()
    assert scale > 0, "reference is all zeros, so the comparison would prove nothing"
    return float(np.abs(a - b).max() / scale)


def randomize(model: ViT, seed: int) -> None:
    """Make biases, LN params and CLS/pos tables random; rescale minivit's init weight matrices to
    std 1/sqrt(fan_in) so GELU, softmax and tanh work away from their linear regions."""
    rng = np.random.default_rng(seed)
    for k, v in model.params.items():
        shape = v.shape
        old = backend.to_numpy(v)
        if k == "norm.w" or (k.startswith("blocks.") and ".norm" in k and k.endswith(".w")):
            new = 1.0 + 0.3 * rng.standard_normal(shape)
        elif k.endswith(".b") or k in ("cls_token", "pos_embed"):
            new = 0.2 * rng.standard_normal(shape)
        elif old.std() > 0:                                   # a weight matrix (fan_in, fan_out)
            new = old / (old.std() * math.sqrt(shape[0]))
        else:                                                 # an all-zero init (e.g. a zero head)
            new = rng.standard_normal(shape) / math.sqrt(shape[0])
        v[...] = backend.xp_of(v).asarray(new, dtype=v.dtype)


def make_pair(overrides: dict, batch: int, seed: int = 0):
    """A float64 minivit model with randomized params, the torch twin, inputs and labels."""
    cfg = ViTConfig(**{**BASE, **overrides}, dtype="float64")
    model = ViT(cfg, seed=seed)
    randomize(model, seed + 1)
    tm = TorchViT(cfg, dtype=torch.float64).eval()
    tm.load_minivit_params({k: backend.to_numpy(v) for k, v in model.params.items()})
    rng = np.random.default_rng(seed + 2)
    x = rng.standard_normal((batch, cfg.in_channels, cfg.image_size, cfg.image_size))
    labels = rng.integers(0, cfg.num_classes, size=batch)
    return cfg, model, tm, x, labels


@pytest.mark.parametrize("name,overrides,batch,smoothing", CASES, ids=IDS)
def test_logits_match_torch(name, overrides, batch, smoothing):
    _, model, tm, x, _ = make_pair(overrides, batch)
    ours = backend.to_numpy(model.forward(backend.xp().asarray(x), train=False))
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    assert ours.dtype == np.float64
    err = relerr(ours, ref)
    assert err < TOL, f"{name}: logits rel err {err:.3e}\nminivit {ours}\ntorch {ref}"


@pytest.mark.parametrize("name,overrides,batch,smoothing", CASES, ids=IDS)
def test_loss_and_grads_match_torch(name, overrides, batch, smoothing):
    _, model, tm, x, labels = make_pair(overrides, batch)
    xp = backend.xp()
    logits = model.forward(xp.asarray(x), train=True)
    loss, cache = cross_entropy_forward(logits, xp.asarray(labels), smoothing=smoothing)
    dx = backend.to_numpy(model.backward(cross_entropy_backward(cache)))

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    ref_logits = tm(xt)
    ref_loss = F.cross_entropy(ref_logits, torch.from_numpy(labels), label_smoothing=smoothing)
    ref_loss.backward()

    err = relerr(backend.to_numpy(logits), ref_logits.detach().numpy())
    assert err < TOL, f"{name}: train-mode logits rel err {err:.3e}"
    err = abs(float(loss) - ref_loss.item()) / abs(ref_loss.item())
    assert err < TOL, f"{name}: loss {float(loss)!r} vs torch {ref_loss.item()!r} (rel {err:.3e})"
    err = relerr(dx, xt.grad.numpy())
    assert err < TOL, f"{name}: dx rel err {err:.3e}"

    ref_grads = tm.grads_as_minivit()
    assert set(model.grads) == set(model.params) == set(ref_grads)
    bad = {}
    for k, ref in ref_grads.items():
        ours = backend.to_numpy(model.grads[k])
        assert ours.shape == ref.shape, f"{name}: grad {k} shape {ours.shape}, torch {ref.shape}"
        err = relerr(ours, ref)
        if err >= TOL:
            bad[k] = err
    assert not bad, f"{name}: grads differ from torch (rel err): " + ", ".join(
        f"{k}={e:.3e}" for k, e in sorted(bad.items()))


@pytest.mark.parametrize("name,overrides,batch,smoothing", CASES, ids=IDS)
def test_attention_probs_match_torch(name, overrides, batch, smoothing):
    cfg, model, tm, x, _ = make_pair(overrides, batch)
    logits, attns = model.forward(backend.xp().asarray(x), return_attention=True)
    with torch.no_grad():
        ref_logits, ref_attns = tm(torch.from_numpy(x), return_attention=True)
    err = relerr(backend.to_numpy(logits), ref_logits.numpy())
    assert err < TOL, f"{name}: logits with return_attention rel err {err:.3e}"
    assert len(attns) == len(ref_attns) == cfg.depth
    N = cfg.num_tokens
    for i, (a, ref) in enumerate(zip(attns, ref_attns)):
        a, ref = backend.to_numpy(a), ref.numpy()
        assert a.shape == (batch, cfg.heads, N, N), f"{name}: layer {i} attention shape {a.shape}"
        err = relerr(a, ref)
        assert err < TOL, f"{name}: layer {i} attention rel err {err:.3e}"
        assert np.abs(ref - 1.0 / N).max() > 0.05, "attention is near uniform; the check would be weak"


@pytest.mark.parametrize("name,overrides,batch,smoothing", [CASES[0], CASES[5], CASES[6]],
                         ids=[CASES[0][0], CASES[5][0], CASES[6][0]])
def test_sdpa_matches_written_out_attention(name, overrides, batch, smoothing):
    """sdpa=True (F.scaled_dot_product_attention, as the benchmarks may time it) is the same model:
    logits and every gradient."""
    cfg, model, tm, x, labels = make_pair(overrides, batch)
    fused = TorchViT(cfg, dtype=torch.float64, sdpa=True).eval()
    fused.load_minivit_params({k: backend.to_numpy(v) for k, v in model.params.items()})
    for m in (tm, fused):
        F.cross_entropy(m(torch.from_numpy(x)), torch.from_numpy(labels)).backward()
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
        assert relerr(fused(torch.from_numpy(x)).numpy(), ref) < TOL
    assert relerr(backend.to_numpy(model.forward(x)), ref) < TOL
    want, got = tm.grads_as_minivit(), fused.grads_as_minivit()
    for k in want:
        assert relerr(got[k], want[k]) < TOL, k
    with pytest.raises(ValueError, match="sdpa=False"):
        fused(torch.from_numpy(x), return_attention=True)


def test_reference_for_timing():
    """What the benchmarks rely on: float32 by default, minivit's parameter count and decay set,
    dropout active in train mode only, drop path refused."""
    cfg = ViTConfig(**BASE, dropout=0.3, attn_dropout=0.3)
    model = ViT(cfg, seed=0)
    tm = TorchViT(cfg).load_minivit_params(model.params)
    assert tm.head.weight.dtype == torch.float32 and tm.num_params() == model.num_params()
    decay, rest = tm.param_groups(0.05)
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    assert sum(p.numel() for p in decay["params"]) == sum(model.params[k].size
                                                          for k in model.decay_keys())
    assert len(decay["params"]) + len(rest["params"]) == len(list(tm.parameters()))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 1, 8, 8), dtype=np.float32))
    with torch.no_grad():
        tm.eval()
        ref = model.forward(x.numpy())
        assert relerr(tm(x).numpy(), ref) < 1e-5
        tm.train()
        a, b = tm(x).numpy(), tm(x).numpy()
    assert not np.allclose(a, b), "train mode with dropout > 0 should draw new masks"
    with pytest.raises(ValueError, match="drop_path"):
        TorchViT(ViTConfig(**BASE, drop_path=0.1))


def test_torch_patch_embed_is_the_spec_patchify():
    """The reference's conv layout equals tokens = patchify(x) @ w + b, index (i*p + j)*C + c."""
    cfg = ViTConfig(**{**BASE, "image_size": 12, "patch_size": 4, "in_channels": 3}, dtype="float64")
    tm = TorchViT(cfg, dtype=torch.float64)
    rng = np.random.default_rng(5)
    p, C, G, D = cfg.patch_size, cfg.in_channels, cfg.image_size // cfg.patch_size, cfg.dim
    w, b = rng.standard_normal((p * p * C, D)), rng.standard_normal(D)
    x = rng.standard_normal((2, C, cfg.image_size, cfg.image_size))
    patches = np.zeros((2, G * G, p * p * C))
    for gi in range(G):
        for gj in range(G):
            for i in range(p):
                for j in range(p):
                    for c in range(C):
                        patches[:, gi * G + gj, (i * p + j) * C + c] = x[:, c, gi * p + i, gj * p + j]
    want = patches @ w + b                                                   # (B, P, D)
    with torch.no_grad():
        tm.patch_embed.weight.copy_(tm._to_torch(w, "conv"))
        tm.patch_embed.bias.copy_(torch.from_numpy(b))
        got = F.conv2d(torch.from_numpy(x), tm.patch_embed.weight, tm.patch_embed.bias, stride=p)
    got = got.flatten(2).transpose(1, 2).numpy()                             # (B, P, D)
    assert relerr(got, want) < 1e-13
    assert np.array_equal(tm._to_minivit(tm.patch_embed.weight, "conv"), w)  # the layout round-trips


def test_torch_sincos_table_is_the_spec_formula():
    grid, dim = 3, 8
    pe = sincos_pos_embed(grid, dim, torch.float64)[0].numpy()               # (N, D)
    assert pe.shape == (grid * grid + 1, dim)
    assert not pe[0].any(), "CLS row must be zeros"
    d4 = dim // 4
    for r in range(grid):
        for c in range(grid):
            row = pe[1 + r * grid + c]
            for k in range(d4):
                om = 1.0 / 10000 ** (k / d4)
                assert row[k] == pytest.approx(math.sin(r * om), abs=1e-15)
                assert row[d4 + k] == pytest.approx(math.cos(r * om), abs=1e-15)
                assert row[2 * d4 + k] == pytest.approx(math.sin(c * om), abs=1e-15)
                assert row[3 * d4 + k] == pytest.approx(math.cos(c * om), abs=1e-15)
