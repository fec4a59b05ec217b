"""Optimizers against hand-computed steps and torch.optim, schedules, clipping, state round trip."""
import math

import numpy as np
import pytest

from minivit import ViT, ViTConfig, backend
from minivit.optim import SGD, AdamW, clip_grad_norm, warmup_cosine
from minivit.params import ParamDict

from conftest import needs_torch


def tiny(xp):
    return {"blocks.0.mlp.fc1.w": xp.asarray([[1.0, -2.0], [0.5, 3.0]]),
            "blocks.0.mlp.fc1.b": xp.asarray([0.1, -0.2]),
            "blocks.0.norm1.w": xp.asarray([1.0, 1.0])}


DECAY = {"blocks.0.mlp.fc1.w"}     # what a model's decay_keys() would give for tiny()'s keys


def grads_of(params, scale=1.0):
    """Fixed gradients on each parameter's own backend (no NumPy array meets a CuPy one)."""
    return {k: backend.xp_of(v).asarray(scale * (np.arange(v.size).reshape(v.shape) % 3 - 1.0),
                                        dtype=v.dtype) for k, v in params.items()}


def test_model_decay_keys():
    decay = ViT(ViTConfig(depth=4, representation_size=8)).decay_keys()
    for k in ("patch_embed.w", "blocks.3.attn.qkv.w", "head.w", "blocks.0.mlp.fc2.w",
              "pre_logits.w", "blocks.2.attn.proj.w", "blocks.1.mlp.fc1.w"):
        assert k in decay, k
    for k in ("patch_embed.b", "cls_token", "pos_embed", "norm.w", "norm.b",
              "blocks.0.norm1.w", "blocks.0.norm2.b", "blocks.0.attn.qkv.b", "pre_logits.b"):
        assert k not in decay, k


def test_decay_set_is_respected(xp):
    p = tiny(xp)
    before = {k: backend.to_numpy(v).copy() for k, v in p.items()}
    g = {k: xp.zeros_like(v) for k, v in p.items()}                # only decay can move p
    SGD(p, lr=0.1, momentum=0.0, weight_decay=0.5, decay={"blocks.0.mlp.fc1.w"}).step(g)
    np.testing.assert_allclose(backend.to_numpy(p["blocks.0.mlp.fc1.w"]),
                               before["blocks.0.mlp.fc1.w"] * (1 - 0.1 * 0.5), rtol=1e-15)
    for k in ("blocks.0.mlp.fc1.b", "blocks.0.norm1.w"):
        np.testing.assert_array_equal(backend.to_numpy(p[k]), before[k])
    with pytest.raises(ValueError, match="not parameters"):
        AdamW(tiny(xp), decay={"nope.w"})


def test_sgd_by_hand(xp):
    p = tiny(xp)
    w0 = backend.to_numpy(p["blocks.0.mlp.fc1.w"]).copy()
    g = {k: xp.ones_like(v) for k, v in p.items()}
    opt = SGD(p, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.01,
              decay=DECAY)
    opt.step(g)                                            # buf = g + wd w; w -= lr buf
    b1 = 1 + 0.01 * w0
    w1 = w0 - 0.1 * b1
    np.testing.assert_allclose(backend.to_numpy(p["blocks.0.mlp.fc1.w"]), w1, rtol=1e-15)
    opt.step(g)                                            # buf = 0.9 buf + g + wd w1
    w2 = w1 - 0.1 * (0.9 * b1 + 1 + 0.01 * w1)
    np.testing.assert_allclose(backend.to_numpy(p["blocks.0.mlp.fc1.w"]), w2, rtol=1e-15)
    # bias: no weight decay: buf = 1, then 1.9
    np.testing.assert_allclose(backend.to_numpy(p["blocks.0.mlp.fc1.b"]),
                               np.array([0.1, -0.2]) - 0.1 * 1 - 0.1 * 1.9, rtol=1e-15)


def test_plain_sgd_by_hand(xp):
    p = {"a.w": xp.asarray([1.0, -2.0]), "a.b": xp.asarray([0.5])}
    opt = SGD(p, lr=0.1, momentum=0.0, weight_decay=0.5, decay={"a.w"})
    for _ in range(2):                                     # w -= lr (g + wd w); b -= lr g
        opt.step({"a.w": xp.asarray([0.2, 0.4]), "a.b": xp.asarray([1.0])})
    w1 = np.array([1.0, -2.0]) - 0.1 * (np.array([0.2, 0.4]) + 0.5 * np.array([1.0, -2.0]))
    w2 = w1 - 0.1 * (np.array([0.2, 0.4]) + 0.5 * w1)
    np.testing.assert_allclose(backend.to_numpy(p["a.w"]), w2, rtol=1e-15)
    np.testing.assert_allclose(backend.to_numpy(p["a.b"]), [0.5 - 0.2], rtol=1e-15)
    assert opt.t == 2


def test_float32_stays_float32(xp):
    p = {"a.w": xp.ones((2, 2), dtype=xp.float32), "a.b": xp.ones(2, dtype=xp.float32)}
    ids = {k: id(v) for k, v in p.items()}
    for opt in (AdamW(p, lr=0.1, decay={"a.w"}),
                SGD(p, lr=0.1, nesterov=True, weight_decay=0.1, decay={"a.w"})):
        opt.step({k: xp.full(v.shape, 0.5, dtype=xp.float32) for k, v in p.items()})
        assert all(v.dtype == xp.float32 and id(v) == ids[k] for k, v in p.items())
        assert all(v.dtype == np.float32 for v in opt.state_dict().values() if v.ndim)


def test_nesterov_by_hand(xp):
    p = {"x.w": xp.asarray([2.0])}
    opt = SGD(p, lr=0.5, momentum=0.5, nesterov=True)
    opt.step({"x.w": xp.asarray([1.0])})                  # buf = 1; step g + m buf = 1.5
    opt.step({"x.w": xp.asarray([1.0])})                  # buf = 1.5; step 1 + .75 = 1.75
    assert float(p["x.w"][0]) == pytest.approx(2.0 - 0.5 * 1.5 - 0.5 * 1.75, abs=1e-15)


def test_adamw_by_hand(xp):
    p = {"a.w": xp.asarray([1.0, -1.0]), "a.b": xp.asarray([0.5, 0.5])}
    opt = AdamW(p, lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, decay={"a.w"})
    g = {"a.w": xp.asarray([0.2, -0.4]), "a.b": xp.asarray([1.0, 0.0])}
    w, b = np.array([1.0, -1.0]), np.array([0.5, 0.5])
    m_w = v_w = m_b = v_b = 0.0
    for t in (1, 2, 3):
        opt.step(g)
        gw, gb = np.array([0.2, -0.4]), np.array([1.0, 0.0])
        m_w, v_w = 0.9 * m_w + 0.1 * gw, 0.99 * v_w + 0.01 * gw ** 2
        m_b, v_b = 0.9 * m_b + 0.1 * gb, 0.99 * v_b + 0.01 * gb ** 2
        w = w * (1 - 0.1 * 0.1)
        w = w - 0.1 * (m_w / (1 - 0.9 ** t)) / (np.sqrt(v_w / (1 - 0.99 ** t)) + 1e-8)
        b = b - 0.1 * (m_b / (1 - 0.9 ** t)) / (np.sqrt(v_b / (1 - 0.99 ** t)) + 1e-8)
        np.testing.assert_allclose(backend.to_numpy(p["a.w"]), w, rtol=1e-14)
        np.testing.assert_allclose(backend.to_numpy(p["a.b"]), b, rtol=1e-14)
    assert opt.t == 3


@needs_torch
@pytest.mark.parametrize("kind", ["adamw", "sgd", "nesterov", "plain"])
def test_against_torch_optim(kind):
    import torch
    rng = np.random.default_rng(0)
    names = ["head.w", "head.b", "norm.w", "blocks.0.attn.qkv.w"]
    params = {k: rng.standard_normal((3, 4) if k.endswith("w") and "norm" not in k else (4,))
              for k in names}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    decay_keys = {"head.w", "blocks.0.attn.qkv.w"}
    decay = [tparams[k] for k in names if k in decay_keys]
    no_decay = [tparams[k] for k in names if k not in decay_keys]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    if kind == "adamw":
        ours = AdamW(params, lr=0.01, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1,
                     decay=decay_keys)
        theirs = torch.optim.AdamW(groups, lr=0.01, betas=(0.8, 0.95), eps=1e-7)
    else:
        mom = 0.0 if kind == "plain" else 0.9
        ours = SGD(params, lr=0.05, momentum=mom, nesterov=kind == "nesterov", weight_decay=0.1,
                   decay=decay_keys)
        theirs = torch.optim.SGD(groups, lr=0.05, momentum=mom, nesterov=kind == "nesterov")
    for step in range(6):
        g = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for k, t in tparams.items():
            t.grad = torch.tensor(g[k])
        ours.step(g)
        theirs.step()
    for k in names:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_lr_override_and_frozen(xp):
    p = tiny(xp)
    before = {k: backend.to_numpy(v).copy() for k, v in p.items()}
    opt = AdamW(p, lr=1.0, weight_decay=0.5, frozen={"blocks.0.mlp.fc1.w"},
                decay=DECAY)
    opt.step(grads_of(p), lr=0.0 + 1e-3)
    assert (backend.to_numpy(p["blocks.0.mlp.fc1.w"]) == before["blocks.0.mlp.fc1.w"]).all()
    assert not (backend.to_numpy(p["blocks.0.mlp.fc1.b"]) == before["blocks.0.mlp.fc1.b"]).all()
    with pytest.raises(ValueError, match="not parameters"):
        AdamW(p, frozen={"nope"})


def test_state_is_one_flat_vector_per_buffer(xp):
    """The moments of every trainable key are views into one flat vector; frozen keys have none."""
    p = tiny(xp)
    opt = AdamW(p, lr=0.1, frozen={"blocks.0.norm1.w"}, decay=DECAY)
    assert set(opt.state["m"]) == {"blocks.0.mlp.fc1.w", "blocks.0.mlp.fc1.b"}
    assert opt.flat["m"].shape == (6,) and opt.flat["v"].shape == (6,)
    opt.step(grads_of(p, scale=2.0))
    flat_m = backend.to_numpy(opt.flat["m"])
    np.testing.assert_array_equal(flat_m[:4], backend.to_numpy(opt.state["m"]["blocks.0.mlp.fc1.w"]).ravel())
    np.testing.assert_array_equal(flat_m[4:], backend.to_numpy(opt.state["m"]["blocks.0.mlp.fc1.b"]))
    np.testing.assert_allclose(flat_m, 0.1 * 2.0 * np.array([-1, 0, 1, -1, -1, 0]),
                               rtol=1e-15)                # (1 - b1) g after one step
    empty = AdamW(p, lr=0.1, frozen=set(p))               # nothing to train: a step changes nothing
    before = {k: backend.to_numpy(v).copy() for k, v in p.items()}
    empty.step(grads_of(p))
    assert all((backend.to_numpy(p[k]) == before[k]).all() for k in p)


def test_a_parameter_that_changed_shape_is_named(xp):
    p = tiny(xp)
    opt = AdamW(p, lr=0.1)
    p["blocks.0.mlp.fc1.b"] = xp.zeros(3)                 # e.g. a new head after the optimizer
    with pytest.raises(ValueError, match=r"fc1.b.*changed shape.*build the optimizer after"):
        opt.step(grads_of(p))


def test_state_dict_round_trip_continues_identically(xp):
    a, b = tiny(xp), tiny(xp)
    oa = AdamW(a, lr=0.1)
    for _ in range(3):
        oa.step(grads_of(a))
    state = oa.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    for k in b:
        b[k][...] = a[k]
    ob = AdamW(b, lr=0.1)
    ob.load_state_dict(state)
    oa.step(grads_of(a, 0.5))
    ob.step(grads_of(b, 0.5))
    for k in a:
        assert (backend.to_numpy(a[k]) == backend.to_numpy(b[k])).all()
    with pytest.raises(ValueError, match="missing"):
        ob.load_state_dict({k: v for k, v in state.items() if k != "opt.t"})
    with pytest.raises(ValueError, match="unexpected"):
        SGD(b, lr=0.1).load_state_dict(state)
    k = "opt.m.blocks.0.mlp.fc1.b"
    for bad, match in [({k: np.zeros(3)}, "wrong shapes"),
                       ({k: np.zeros(2, np.float32)}, "wrong dtypes"),
                       ({"opt.t": np.zeros(2, np.int64)}, "opt.t")]:
        snapshot = ob.state_dict()
        with pytest.raises(ValueError, match=match):
            ob.load_state_dict({**state, **bad})
        assert all((ob.state_dict()[n] == v).all() for n, v in snapshot.items())  # untouched


def test_warmup_cosine_values():
    f = lambda s: warmup_cosine(s, total_steps=110, base_lr=1.0, warmup_steps=10, min_lr=0.1)
    assert f(0) == pytest.approx(0.1)                      # (0 + 1) / 10
    assert f(9) == pytest.approx(1.0)                      # end of warmup
    assert f(10) == pytest.approx(1.0)                     # cosine starts at the peak
    assert f(60) == pytest.approx(0.55)                    # halfway: min + (max - min) / 2
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert warmup_cosine(5, 10, 2.0) == pytest.approx(1.0)  # no warmup


def test_clip_grad_norm(xp):
    g = {"a": xp.asarray([3.0, 0.0]), "b": xp.asarray([[4.0]])}
    assert clip_grad_norm(g, 10.0) == pytest.approx(5.0)
    assert float(g["a"][0]) == 3.0                         # below the limit: untouched
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0, rel=1e-15)
    np.testing.assert_allclose(backend.to_numpy(g["a"]), [0.6, 0.0], rtol=1e-15)
    np.testing.assert_allclose(backend.to_numpy(g["b"]), [[0.8]], rtol=1e-15)
    total = math.sqrt(float((g["a"] ** 2).sum() + (g["b"] ** 2).sum()))
    assert total == pytest.approx(1.0, rel=1e-15)          # max_norm exactly
    g["a"][0] = np.nan
    before = backend.to_numpy(g["b"]).copy()
    assert math.isnan(clip_grad_norm(g, 1.0))              # returned for the trainer to act on
    assert (backend.to_numpy(g["b"]) == before).all()      # and nothing scaled
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(g, -1.0)


def test_bad_hyperparameters():
    p = {"a.w": np.zeros(2)}
    for kwargs, match in [(dict(lr=-1), "lr"), (dict(lr=0.1, weight_decay=-1), "weight_decay")]:
        with pytest.raises(ValueError, match=match):
            AdamW(p, **kwargs)
    with pytest.raises(ValueError, match="momentum"):
        SGD(p, lr=0.1, momentum=1.5)


def test_decay_defaults_to_every_key_as_in_torch(xp):
    p = {"a.w": xp.asarray([1.0]), "a.b": xp.asarray([2.0])}
    SGD(p, lr=0.1, momentum=0.0, weight_decay=0.5).step({k: xp.zeros(1) for k in p})
    np.testing.assert_allclose(backend.to_numpy(p["a.w"]), [0.95], rtol=1e-15)
    np.testing.assert_allclose(backend.to_numpy(p["a.b"]), [1.9], rtol=1e-15)


def test_flat_path_equals_per_key_path(xp):
    """AdamW over a model's ParamDicts (one flat vector) gives the same bits as over plain dicts,
    with and without frozen keys, and updates the params' own flat vector in place."""
    rng = np.random.default_rng(0)
    shapes = {"w1": (3, 4), "b1": (4,), "w2": (4, 2), "b2": (2,)}
    init = {k: rng.standard_normal(s) for k, s in shapes.items()}
    for frozen in (set(), {"w1", "b1"}, {"b1"}):
        flat = ParamDict.from_arrays({k: xp.asarray(v) for k, v in init.items()})
        plain = {k: xp.asarray(v.copy()) for k, v in init.items()}
        base = flat.flat
        o1 = AdamW(flat, lr=0.1, weight_decay=0.1, frozen=frozen, decay={"w1", "w2"})
        o2 = AdamW(plain, lr=0.1, weight_decay=0.1, frozen=frozen, decay={"w1", "w2"})
        assert (o1.run is not None) == (frozen != {"b1"})   # one contiguous trainable range
        for _ in range(3):
            g = {k: rng.standard_normal(s) for k, s in shapes.items()}
            o1.step(ParamDict.from_arrays({k: xp.asarray(v) for k, v in g.items()}))
            o2.step({k: xp.asarray(v) for k, v in g.items()})
        assert flat.flat is base
        for k in shapes:
            np.testing.assert_array_equal(backend.to_numpy(flat[k]), backend.to_numpy(plain[k]))
        assert clip_grad_norm(flat, 1e9) == pytest.approx(clip_grad_norm(plain, 1e9), rel=1e-15)
