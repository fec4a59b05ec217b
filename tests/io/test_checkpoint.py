"""Checkpoints: round trip, exact resume, atomic writes and a clear error for every bad file."""
import json
import os
import pathlib

import numpy as np
import pytest

from minivit import ViT, ViTConfig, backend
from minivit.io import checkpoint as ckpt
from minivit.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivit.layers import cross_entropy_backward, cross_entropy_forward
from minivit.optim import AdamW, SGD

CFG = dict(image_size=8, patch_size=4, in_channels=1, dim=8, depth=2, heads=2, num_classes=3)


def train_steps(model, opt, k, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(k):
        x = backend.asarray(rng.standard_normal((4, 1, 8, 8)).astype(model.config.dtype))
        y = backend.asarray(rng.integers(0, 3, 4))
        loss, cache = cross_entropy_forward(model.forward(x, train=True), y)
        model.backward(cross_entropy_backward(cache))
        opt.step(model.grads)


def test_round_trip(tmp_path, xp):
    m = ViT(ViTConfig(**CFG), seed=1)
    opt = AdamW(m.params, lr=1e-2)
    train_steps(m, opt, 2)
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, m, opt, step=2, epoch=0, rng_state=m.rng.bit_generator.state,
                    extra={"note": "hi"})
    with np.load(path, allow_pickle=False) as f:                  # no pickle anywhere
        assert "meta" in f.files and "params/head.w" in f.files and "opt.t" in f.files
    meta = load_checkpoint(path)
    m2 = meta["model"]
    assert m2.config == m.config and meta["step"] == 2 and meta["extra"] == {"note": "hi"}
    for k, v in m.params.items():
        assert (backend.to_numpy(m2.params[k]) == backend.to_numpy(v)).all()
    opt2 = AdamW(m2.params, lr=1e-2)
    load_checkpoint(path, m2, opt2)
    assert opt2.t == 2
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1.keys() == s2.keys() and all((s1[k] == s2[k]).all() for k in s1)
    assert meta["optimizer"] == {"class": "AdamW", "lr": 1e-2, "weight_decay": 0.05,
                                 "betas": [0.9, 0.999], "eps": 1e-8}
    assert meta["format_version"] == ckpt.FORMAT_VERSION and meta["epoch"] == 0
    assert meta["rng_state"] == json.loads(json.dumps(m.rng.bit_generator.state))


def test_resume_is_exact(tmp_path):
    """k steps straight == k/2 steps + save + load into a fresh model and optimizer + k/2 steps."""
    cfg = ViTConfig(**CFG, dropout=0.1, drop_path=0.1)
    a = ViT(cfg, seed=3)
    oa = AdamW(a.params, lr=1e-2)
    train_steps(a, oa, 4, seed=0)
    train_steps(a, oa, 4, seed=1)

    b = ViT(cfg, seed=3)
    ob = AdamW(b.params, lr=1e-2)
    train_steps(b, ob, 4, seed=0)
    path = str(tmp_path / "half.npz")
    save_checkpoint(path, b, ob, step=4, rng_state=b.rng.bit_generator.state)
    c = ViT(cfg, seed=99)                                         # a different init and rng
    oc = AdamW(c.params, lr=1e-2)
    meta = load_checkpoint(path, c, oc)
    c.rng.bit_generator.state = meta["rng_state"]
    train_steps(c, oc, 4, seed=1)
    for k in a.params:
        assert (a.params[k] == c.params[k]).all(), k


def test_atomic_write_keeps_old_file(tmp_path, monkeypatch):
    m = ViT(ViTConfig(**CFG))
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, m, step=1)
    good = pathlib.Path(path).read_bytes()

    def crash(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(ckpt.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, m, step=2)
    assert pathlib.Path(path).read_bytes() == good
    assert os.listdir(tmp_path) == ["c.npz"]                      # no temporary left behind


def bad_file(tmp_path, mutate):
    m = ViT(ViTConfig(**CFG))
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, m, AdamW(m.params, lr=1e-3))
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    mutate(arrays)
    np.savez(path, **arrays)
    return path, m


def set_meta(arrays, **changes):
    meta = json.loads(arrays["meta"].tobytes())
    meta.update(changes)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)


def drop_meta_key(meta_bytes, key):
    meta = json.loads(meta_bytes.tobytes())
    del meta[key]
    return np.frombuffer(json.dumps(meta).encode(), np.uint8)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.pop("params/head.b"), r"missing \['head.b'\]"),
    (lambda a: a.update({"params/extra.w": np.zeros(2)}), r"unexpected \['extra.w'\]"),
    (lambda a: a.update({"params/head.w": np.zeros((9, 3), np.float32)}), "wrong shapes"),
    (lambda a: a.update({"params/head.b": np.zeros(3, np.float64)}), r"head.b: float64 vs float32"),
    (lambda a: a.update({"opt.v.head.b": np.zeros(5, np.float32)}), "wrong shapes"),
    (lambda a: a.update({"meta": np.frombuffer(b"[1, 2]", np.uint8)}), "not an object"),
    (lambda a: a.update(meta=drop_meta_key(a["meta"], "config")), r"lacks \['config'\]"),
    (lambda a: set_meta(a, format_version=99), "format version 99"),
    (lambda a: a.pop("meta"), "not a minivit checkpoint"),
    (lambda a: a.update({"meta": np.frombuffer(b"{not json", np.uint8)}), "corrupt"),
])
def test_bad_checkpoints(tmp_path, mutate, match):
    path, m = bad_file(tmp_path, mutate)
    opt = AdamW(m.params, lr=1e-3)
    before = {k: v.copy() for k, v in m.params.items()}
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path, m, opt)
    assert all((m.params[k] == before[k]).all() for k in before)   # never a partial load
    assert opt.t == 0 and all((v == 0).all() for v in opt.state_dict().values())


def test_other_config_is_clear(tmp_path):
    m = ViT(ViTConfig(**CFG))
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, m)
    other = ViT(ViTConfig(**{**CFG, "dim": 12}))
    with pytest.raises(CheckpointError, match=r"another config.*'dim': \(8, 12\)"):
        load_checkpoint(path, other)


def test_wrong_optimizer_is_clear(tmp_path):
    m = ViT(ViTConfig(**CFG))
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, m, AdamW(m.params, lr=1e-3))
    with pytest.raises(CheckpointError, match="--optimizer"):
        load_checkpoint(path, m, SGD(m.params, lr=0.1))


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_and_garbage_files(tmp_path, keep):
    m = ViT(ViTConfig(**CFG))
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, m)
    data = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or not a minivit checkpoint"):
        load_checkpoint(path)
    pathlib.Path(path).write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="truncated or not a minivit checkpoint"):
        load_checkpoint(path)


# ---- what the fuzz run found (tests/fuzz) -------------------------------------------------------
def set_config(arrays, **changes):
    meta = json.loads(arrays["meta"].tobytes())
    meta["config"].update(changes)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: set_meta(a, optimizer={"lr": 0.1}), r"'optimizer' = \{'lr': 0.1\}, not null or"),
    (lambda a: set_meta(a, step="3"), r"'step' = '3', not a non-negative integer"),
    (lambda a: set_meta(a, epoch=-1), r"'epoch' = -1, not a non-negative integer"),
    (lambda a: set_meta(a, extra=[1]), r"'extra' = \[1\], not an object"),
    (lambda a: set_meta(a, config=[1, 2]), r"'config' = \[1, 2\], not an object"),
    (lambda a: set_meta(a, preprocessing=5), r"'preprocessing' = 5, not null or an object"),
    (lambda a: set_meta(a, format_version=True), r"format version True"),
    (lambda a: set_config(a, class_token="yes"), r"config whose \['class_token'\] are not"),
    (lambda a: set_config(a, mlp_ratio=float("inf")), r"model config is invalid"),  # Overflow
    (lambda a: set_config(a, representation_size=2.5), r"does not fit the model|another conf"),
    (lambda a: a.update(meta=np.frombuffer(b"[" * 100000, np.uint8)), "'meta' header is corrupt"),
])
def test_meta_values_of_the_wrong_type(tmp_path, mutate, match):
    """KeyError ('class'), OverflowError, RecursionError and TypeError escaped from these."""
    path, m = bad_file(tmp_path, mutate)
    for load in (lambda: load_checkpoint(path), lambda: load_checkpoint(
            path, m, AdamW(m.params, lr=1e-3))):
        with pytest.raises(CheckpointError, match=match) as e:
            load()
        assert path in str(e.value)


@pytest.mark.parametrize("changes, match", [
    (dict(depth=10 ** 6), r"depth=1000000, more blocks than"),
    (dict(image_size=4 * 10 ** 5), r"does not fit the model"),
    (dict(pos_embed="sincos", image_size=4 * 4096), r"sincos position table of 16777216 patches"),
    (dict(pos_embed="sincos", dim=6, heads=2), r"dim divisible by 4"),
])
def test_a_damaged_config_allocates_nothing(tmp_path, changes, match):
    """The model was built from the file's config before its parameters were checked: a config
    with a million blocks or a sincos table for a huge image reserved gigabytes (a dim the
    sincos table cannot take escaped as a plain ValueError)."""
    import tracemalloc

    def mutate(a):
        set_config(a, **changes)
        if changes.get("pos_embed") == "sincos":
            a.pop("params/pos_embed")
            a.pop("opt.m.pos_embed")
            a.pop("opt.v.pos_embed")
    path, _ = bad_file(tmp_path, mutate)
    if changes.get("dim") == 6:                          # a file whose params fit dim 6
        m = ViT(ViTConfig(**{**CFG, "dim": 6, "heads": 2}))
        save_checkpoint(path, m)
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays.pop("params/pos_embed")
        set_config(arrays, pos_embed="sincos")
        np.savez(path, **arrays)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


def test_a_huge_dim_that_heads_do_not_divide_is_refused_at_once(tmp_path):
    """Found by the long fuzz run: dim=2**53+1 made ViTConfig's message look for the divisor
    of dim nearest to heads one candidate at a time (a hang); the file holds far fewer values."""
    import time
    path, _ = bad_file(tmp_path, lambda a: set_config(a, dim=2 ** 53 + 1))
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"dim=9007199254740993, more than the \d+ "
                                              r"parameter values it holds"):
        load_checkpoint(path)
    assert time.perf_counter() - t < 2
