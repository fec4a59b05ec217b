"""Google vit_jax .npz checkpoints (minivit/io/google.py): layout, round trip, bad keys, and the
loaded model against Flax's semantics and against the PyTorch reference.

References used here are independent of minivit.io's mapping: the key list is written out by
hand, a NumPy forward pass reads the Google-named arrays directly with Flax's semantics
(HWIO conv over NHWC, DenseGeneral kernels (D, H, Dh) / (H, Dh, D)), and a PyTorch ViT
(tests/torch_vit.py) is filled from the Google names by its own mapping.
"""
import math
import os
import types

import numpy as np
import pytest

from minivit import ViT, ViTConfig, backend
from minivit.io.google import (GoogleNpzError, check_google_arrays, google_config,
                               load_google_npz, read_google_npz, save_google_npz)
from minivit.resample import resize_pos_embed

from conftest import images, randomize_params, relerr

TOL = 1e-10
POS = "Transformer/posembed_input/pos_embedding"
MHA = "MultiHeadDotProductAttention_1"
SMALL = dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2, heads=2,
             mlp_ratio=1.5, dtype="float64")
# an odd architecture for the parity tests: F/D = 20/12 is not a short float
ODD = dict(p=3, C=2, D=12, H=3, F=20, depth=2, grid=3, K=4)


def expected_layout(p, C, D, H, F, depth, grid, K, R=None) -> dict:
    """The vit_jax checkpoint keys and shapes, written out (vit_jax/models_vit.py names)."""
    Dh, N = D // H, grid * grid + 1
    want = {"embedding/kernel": (p, p, C, D), "embedding/bias": (D,), "cls": (1, 1, D),
            POS: (1, N, D)}
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        want.update({
            b + "LayerNorm_0/scale": (D,), b + "LayerNorm_0/bias": (D,),
            b + "MultiHeadDotProductAttention_1/query/kernel": (D, H, Dh),
            b + "MultiHeadDotProductAttention_1/query/bias": (H, Dh),
            b + "MultiHeadDotProductAttention_1/key/kernel": (D, H, Dh),
            b + "MultiHeadDotProductAttention_1/key/bias": (H, Dh),
            b + "MultiHeadDotProductAttention_1/value/kernel": (D, H, Dh),
            b + "MultiHeadDotProductAttention_1/value/bias": (H, Dh),
            b + "MultiHeadDotProductAttention_1/out/kernel": (H, Dh, D),
            b + "MultiHeadDotProductAttention_1/out/bias": (D,),
            b + "LayerNorm_2/scale": (D,), b + "LayerNorm_2/bias": (D,),
            b + "MlpBlock_3/Dense_0/kernel": (D, F), b + "MlpBlock_3/Dense_0/bias": (F,),
            b + "MlpBlock_3/Dense_1/kernel": (F, D), b + "MlpBlock_3/Dense_1/bias": (D,)})
    want.update({"Transformer/encoder_norm/scale": (D,), "Transformer/encoder_norm/bias": (D,)})
    if R:
        want.update({"pre_logits/kernel": (D, R), "pre_logits/bias": (R,)})
    want.update({"head/kernel": (R or D, K), "head/bias": (K,)})
    return want


def google_arrays(seed=0, R=None, **kw) -> dict:
    """Random float64 arrays in the Google layout, made without minivit (LN scales near 1,
    kernels with std 1/sqrt(fan_in))."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in expected_layout(**{**ODD, **kw}, R=R).items():
        if k.endswith("/scale"):
            out[k] = 1.0 + 0.3 * rng.standard_normal(shape)
        elif k.endswith("/kernel"):
            fan_in = shape[0] if not k.endswith("out/kernel") else shape[0] * shape[1]
            fan_in = fan_in if k != "embedding/kernel" else shape[0] * shape[1] * shape[2]
            out[k] = rng.standard_normal(shape) / math.sqrt(fan_in)
        else:
            out[k] = 0.3 * rng.standard_normal(shape)
    return out


@pytest.mark.parametrize("R", [None, 5])
def test_export_layout_keys_and_shapes(tmp_path, R):
    model = ViT(ViTConfig(**SMALL, representation_size=R))
    save_google_npz(model, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        got = {k: f[k].shape for k in f.files}
        dtypes = {f[k].dtype for k in f.files}
    want = expected_layout(p=4, C=2, D=8, H=2, F=12, depth=2, grid=2, K=3, R=R)
    assert got == want
    assert list(got) == list(want)                         # same order as the Flax tree
    assert dtypes == {np.dtype("float64")}
    assert not list(tmp_path.glob(".tmp-*"))               # the temp file was renamed away


def test_export_values_follow_flax_semantics(tmp_path):
    """Element by element: conv HWIO rows (i*p + j)*C + c, heads contiguous in q/k/v and out."""
    model = ViT(ViTConfig(**SMALL))
    randomize_params(model)
    save_google_npz(model, tmp_path / "m.npz")
    g = read_google_npz(tmp_path / "m.npz")
    P = model.params
    p, C, D, H, Dh = 4, 2, 8, 2, 4
    k = g["embedding/kernel"]
    for i, j, c in np.ndindex(p, p, C):
        assert np.array_equal(k[i, j, c], P["patch_embed.w"][(i * p + j) * C + c])
    a = f"Transformer/encoderblock_1/{MHA}/"
    for n, name in enumerate(("query", "key", "value")):
        for h, d in np.ndindex(H, Dh):
            col = n * D + h * Dh + d
            assert np.array_equal(g[a + name + "/kernel"][:, h, d],
                                  P["blocks.1.attn.qkv.w"][:, col])
            assert g[a + name + "/bias"][h, d] == P["blocks.1.attn.qkv.b"][col]
    for h, d in np.ndindex(H, Dh):
        assert np.array_equal(g[a + "out/kernel"][h, d], P["blocks.1.attn.proj.w"][h * Dh + d])
    assert np.array_equal(g["Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel"],
                          P["blocks.1.mlp.fc2.w"])
    assert np.array_equal(g["head/kernel"], P["head.w"])


def test_vit_b16_shapes_infer_config():
    """The real ViT-B/16 in21k layout (shapes only, no memory): 224 px, 21843 classes, R=768."""
    arrays = {k: np.broadcast_to(np.float32(0), s) for k, s in expected_layout(
        p=16, C=3, D=768, H=12, F=3072, depth=12, grid=14, K=21843, R=768).items()}
    cfg = google_config(arrays)
    check_google_arrays(arrays, cfg)
    assert (cfg.image_size, cfg.patch_size, cfg.in_channels, cfg.dim, cfg.depth, cfg.heads,
            cfg.mlp_dim, cfg.num_classes, cfg.representation_size) == \
        (224, 16, 3, 768, 12, 12, 3072, 21843, 768)
    assert (cfg.gelu, cfg.eps, cfg.pool, cfg.pos_embed) == ("tanh", 1e-6, "cls", "learned")


def test_mlp_width_inferred_exactly_for_awkward_ratios():
    for D in range(1, 41):
        for F in range(1, 4 * D + 1):
            arrays = {"embedding/kernel": np.zeros((1, 1, 1, D)), "cls": np.zeros((1, 1, D)),
                      POS: np.zeros((1, 2, D)), "head/kernel": np.zeros((D, 1)),
                      f"Transformer/encoderblock_0/{MHA}/query/kernel": np.zeros((D, 1, D)),
                      "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel": np.zeros((D, F))}
            assert google_config(arrays).mlp_dim == F, (D, F)


@pytest.mark.parametrize("R", [None, 5])
def test_round_trip_params_config_logits(xp, tmp_path, R):
    cfg = ViTConfig(**SMALL, representation_size=R, gelu="erf")
    model = ViT(cfg)
    randomize_params(model)
    save_google_npz(model, tmp_path / "m.npz")
    back = load_google_npz(tmp_path / "m.npz", gelu="erf", dtype="float64")
    assert back.config == cfg
    assert list(back.params) == list(model.params)
    for k in model.params:
        assert backend.xp_of(back.params[k]) is xp
        assert np.array_equal(backend.to_numpy(back.params[k]),
                              backend.to_numpy(model.params[k])), k
    assert back.grads.keys() == back.params.keys()
    x = xp.asarray(images(2, 2, 8))
    assert np.array_equal(backend.to_numpy(back.forward(x)), backend.to_numpy(model.forward(x)))


def test_round_trip_float32_default_dtype(tmp_path):
    model = ViT(ViTConfig(**{**SMALL, "dtype": "float32"}))
    randomize_params(model)
    save_google_npz(model, tmp_path / "m.npz")
    back = load_google_npz(tmp_path / "m.npz")
    assert back.config == model.config
    assert all(v.dtype == np.float32 and np.array_equal(v, model.params[k])
               for k, v in back.params.items())


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"old contents")
    save_google_npz(ViT(ViTConfig(**SMALL)), path)
    assert load_google_npz(path, dtype="float64").config == ViTConfig(**SMALL)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["m.minivit.json", "m.npz"]  # no temps


@pytest.mark.parametrize("prefix", ["opt/target/", "params/"])
def test_prefixes_accepted(tmp_path, prefix):
    arrays = google_arrays(R=6)
    stored = {prefix + k: v for k, v in arrays.items()}
    if prefix == "opt/target/":
        stored["opt/state/step"] = np.array(7.0)            # Flax optimizer state: skipped
    np.savez(tmp_path / "m.npz", **stored)
    plain = tmp_path / "plain.npz"
    np.savez(plain, **arrays)
    a = load_google_npz(tmp_path / "m.npz", dtype="float64")
    b = load_google_npz(plain, dtype="float64")
    assert a.config == b.config
    assert all(np.array_equal(a.params[k], b.params[k]) for k in b.params)


def write(tmp_path, arrays, name="bad.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("edit, match", [
    (lambda a: a.pop("Transformer/encoderblock_1/LayerNorm_2/bias"),
     r"missing keys \(1\): Transformer/encoderblock_1/LayerNorm_2/bias"),
    (lambda a: a.pop("Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"),
     r"missing keys \(1\): Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"),
    (lambda a: a.pop("head/kernel"), r"missing \['head/kernel'\]"),
    (lambda a: a.update({"Transformer/encoderblock_0/extra/kernel": np.zeros(3)}),
     r"unknown keys \(1\): Transformer/encoderblock_0/extra/kernel"),
    (lambda a: a.update({"Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias": np.zeros(5)}),
     r"misshapen keys \(1\): Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias: got \(5,\), "
     r"expected \(12,\)"),
    (lambda a: a.update({f"Transformer/encoderblock_0/{MHA}/out/kernel": np.zeros((4, 3, 12))}),
     r"misshapen keys .*out/kernel: got \(4, 3, 12\), expected \(3, 4, 12\)"),
    (lambda a: a.update({"cls": np.zeros((1, 1, 12), dtype=np.int32)}),
     r"non-float arrays \(1\): cls: int32"),
    (lambda a: a.update({"conv_root/kernel": np.zeros((7, 7, 3, 64))}), r"hybrid R50\+ViT"),
])
def test_bad_keys_raise_with_list(tmp_path, edit, match):
    arrays = google_arrays()
    edit(arrays)
    with pytest.raises(ValueError, match=match):
        load_google_npz(write(tmp_path, arrays))


def test_several_problems_reported_together(tmp_path):
    arrays = google_arrays()
    arrays.pop("embedding/bias")
    arrays["stray"] = np.zeros(2)
    with pytest.raises(ValueError) as e:
        load_google_npz(write(tmp_path, arrays))
    assert "missing keys (1): embedding/bias" in str(e.value)
    assert "unknown keys (1): stray" in str(e.value)


def test_not_a_zip_truncated_npy_pickled_missing(tmp_path):
    (tmp_path / "text.npz").write_text("this is not a checkpoint\n")
    with pytest.raises(ValueError, match="cannot read .*npz"):
        load_google_npz(tmp_path / "text.npz")
    good = write(tmp_path, google_arrays(), "good.npz").read_bytes()
    for cut in (len(good) // 2, len(good) - 10, 100):
        (tmp_path / "cut.npz").write_bytes(good[:cut])
        with pytest.raises(ValueError, match="truncated|damaged"):
            load_google_npz(tmp_path / "cut.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load_google_npz(tmp_path / "single.npy")
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="object \\(pickled\\) arrays"):
        load_google_npz(tmp_path / "obj.npz")
    with pytest.raises(FileNotFoundError):
        load_google_npz(tmp_path / "nope.npz")


def test_gap_and_bad_grid_and_overrides(tmp_path):
    gap = google_arrays()
    gap.pop("cls")
    gap[POS] = gap[POS][:, 1:]                              # 3x3 rows, no CLS row
    with pytest.raises(ValueError, match="classifier='gap'"):
        load_google_npz(write(tmp_path, gap))
    odd = google_arrays()
    odd[POS] = np.zeros((1, 8, 12))                         # 7 patch rows: not a square
    with pytest.raises(ValueError, match="not 1 \\(CLS\\) \\+ grid\\^2"):
        load_google_npz(write(tmp_path, odd))
    path = write(tmp_path, google_arrays(), "ok.npz")
    with pytest.raises(ValueError, match="fixed by the checkpoint's shapes"):
        load_google_npz(path, dim=16)
    with pytest.raises(ValueError, match="fixed by the checkpoint's shapes"):
        load_google_npz(path, num_classes=10)
    with pytest.raises(ValueError, match="sincos"):
        load_google_npz(path, pos_embed="sincos")
    with pytest.raises(ValueError, match="unknown ViTConfig fields"):
        load_google_npz(path, colour="red")
    with pytest.raises(ValueError, match="gelu"):
        load_google_npz(path, gelu="relu")


def test_save_refuses_sincos(tmp_path):
    with pytest.raises(ValueError, match="pos_embed='learned'"):
        save_google_npz(ViT(ViTConfig(**SMALL, pos_embed="sincos")), tmp_path / "m.npz")
    assert not list(tmp_path.iterdir())


def flax_forward(a: dict, x_nchw: np.ndarray, gelu: str, eps: float = 1e-6) -> np.ndarray:
    """vit_jax's VisionTransformer (classifier='token') on Google-named arrays, in NumPy."""
    kern = a["embedding/kernel"]                                          # (p, p, C, D) HWIO
    p, _, C, D = kern.shape
    x = x_nchw.transpose(0, 2, 3, 1)                                      # NHWC
    B, g = x.shape[0], x.shape[1] // p
    x6 = x.reshape(B, g, p, g, p, C)                                      # [b, r, i, s, j, c]
    t = np.einsum("brisjc,ijcd->brsd", x6, kern) + a["embedding/bias"]   # VALID conv, stride p
    t = np.concatenate([np.tile(a["cls"], (B, 1, 1)), t.reshape(B, g * g, D)], 1) + a[POS]

    def ln(h, name):
        mu = h.mean(-1, keepdims=True)
        var = ((h - mu) ** 2).mean(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + eps) * a[name + "/scale"] + a[name + "/bias"]

    def dense(h, name):
        return h @ a[name + "/kernel"] + a[name + "/bias"]

    def act(h):
        if gelu == "tanh":
            return 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
        return 0.5 * h * (1 + np.frompyfunc(math.erf, 1, 1)(h / math.sqrt(2)).astype(float))

    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in a:
        b = f"Transformer/encoderblock_{i}/"
        m = b + MHA + "/"
        h = ln(t, b + "LayerNorm_0")
        q, k, v = (np.einsum("bnd,dhe->bnhe", h, a[m + n + "/kernel"]) + a[m + n + "/bias"]
                   for n in ("query", "key", "value"))                  # (B, N, H, Dh)
        s = np.einsum("bqhe,bkhe->bhqk", q / math.sqrt(q.shape[-1]), k)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("bhqk,bkhe->bqhe", w, v)
        t = t + np.einsum("bqhe,hed->bqd", o, a[m + "out/kernel"]) + a[m + "out/bias"]
        t = t + dense(act(dense(ln(t, b + "LayerNorm_2"), b + "MlpBlock_3/Dense_0")),
                      b + "MlpBlock_3/Dense_1")
        i += 1
    h = ln(t, "Transformer/encoder_norm")[:, 0]
    if "pre_logits/kernel" in a:
        h = np.tanh(dense(h, "pre_logits"))
    return dense(h, "head")


@pytest.mark.parametrize("gelu", ["tanh", "erf"])
@pytest.mark.parametrize("R", [None, 6])
def test_loaded_model_matches_flax_semantics(tmp_path, gelu, R):
    arrays = google_arrays(seed=3, R=R)
    model = load_google_npz(write(tmp_path, arrays), gelu=gelu, dtype="float64")
    x = images(3, ODD["C"], ODD["grid"] * ODD["p"])
    assert relerr(model.forward(x), flax_forward(arrays, x, gelu)) < TOL


def torch_from_google(arrays: dict, gelu: str, R):
    """tests/torch_vit.TorchViT filled straight from the Google names (its own mapping)."""
    torch = pytest.importorskip("torch")
    from torch_vit import TorchViT
    o = ODD
    cfg = types.SimpleNamespace(image_size=o["grid"] * o["p"], patch_size=o["p"],
                                in_channels=o["C"], num_classes=o["K"], dim=o["D"],
                                depth=o["depth"], heads=o["H"], mlp_ratio=o["F"] / o["D"],
                                mlp_dim=o["F"], pool="cls", gelu=gelu, pos_embed="learned",
                                representation_size=R, eps=1e-6, dropout=0.0,
                                attn_dropout=0.0, drop_path=0.0)
    tm = TorchViT(cfg, dtype=torch.float64)
    T = lambda k: torch.from_numpy(np.ascontiguousarray(arrays[k]))   # noqa: E731
    with torch.no_grad():
        tm.patch_embed.weight.copy_(T("embedding/kernel").permute(3, 2, 0, 1))   # HWIO -> OIHW
        tm.patch_embed.bias.copy_(T("embedding/bias"))
        tm.cls_token.copy_(T("cls"))
        tm.pos_embed.copy_(T(POS))
        for i, blk in enumerate(tm.blocks):
            b = f"Transformer/encoderblock_{i}/"
            m = b + MHA + "/"
            blk.norm1.weight.copy_(T(b + "LayerNorm_0/scale"))
            blk.norm1.bias.copy_(T(b + "LayerNorm_0/bias"))
            blk.qkv.weight.copy_(torch.cat([T(m + n + "/kernel").flatten(1).T
                                            for n in ("query", "key", "value")]))   # (3D, D)
            blk.qkv.bias.copy_(torch.cat([T(m + n + "/bias").flatten()
                                          for n in ("query", "key", "value")]))
            blk.proj.weight.copy_(T(m + "out/kernel").flatten(0, 1).T)              # (D, H*Dh)
            blk.proj.bias.copy_(T(m + "out/bias"))
            blk.norm2.weight.copy_(T(b + "LayerNorm_2/scale"))
            blk.norm2.bias.copy_(T(b + "LayerNorm_2/bias"))
            for lin, n in ((blk.fc1, "Dense_0"), (blk.fc2, "Dense_1")):
                lin.weight.copy_(T(b + f"MlpBlock_3/{n}/kernel").T)
                lin.bias.copy_(T(b + f"MlpBlock_3/{n}/bias"))
        tm.norm.weight.copy_(T("Transformer/encoder_norm/scale"))
        tm.norm.bias.copy_(T("Transformer/encoder_norm/bias"))
        if R:
            tm.pre_logits.weight.copy_(T("pre_logits/kernel").T)
            tm.pre_logits.bias.copy_(T("pre_logits/bias"))
        tm.head.weight.copy_(T("head/kernel").T)
        tm.head.bias.copy_(T("head/bias"))
    return torch, tm


@pytest.mark.parametrize("gelu", ["tanh", "erf"])
@pytest.mark.parametrize("R", [None, 6])
def test_torch_parity_through_npz(tmp_path, gelu, R):
    arrays = google_arrays(seed=4, R=R)
    torch, tm = torch_from_google(arrays, gelu, R)
    model = load_google_npz(write(tmp_path, arrays), gelu=gelu, dtype="float64")
    x = images(4, ODD["C"], ODD["grid"] * ODD["p"], seed=2)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    assert relerr(model.forward(x), ref) < TOL
    # and the file minivit writes back is read the same way by the torch mapping
    save_google_npz(model, tmp_path / "again.npz")
    _, tm2 = torch_from_google(read_google_npz(tmp_path / "again.npz"), gelu, R)
    with torch.no_grad():
        assert relerr(tm2(torch.from_numpy(x)).numpy(), ref) < TOL


def test_load_at_new_image_size(tmp_path):
    arrays = google_arrays(seed=5)
    path = write(tmp_path, arrays)
    model = load_google_npz(path, image_size=15, dtype="float64")        # grid 3 -> 5
    assert model.config.image_size == 15 and model.config.num_tokens == 26
    assert np.array_equal(model.params["pos_embed"], resize_pos_embed(arrays[POS], 5))
    assert model.grads["pos_embed"].shape == (1, 26, 12)
    assert model.forward(images(2, 2, 15)).shape == (2, 4)
    bicubic = load_google_npz(path, image_size=15, resize_method="bicubic", dtype="float64")
    assert np.array_equal(bicubic.params["pos_embed"],
                          resize_pos_embed(arrays[POS], 5, "bicubic"))
    same = load_google_npz(path, image_size=9, dtype="float64")
    assert np.array_equal(same.params["pos_embed"], arrays[POS])
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        load_google_npz(path, image_size=16)


# ---- what the layout cannot hold, beside it -----------------------------------------------------

def _labelled_model():
    from minivit import Preprocessing
    cfg = ViTConfig(image_size=8, patch_size=4, in_channels=3, num_classes=3, dim=16, depth=1,
                    heads=2, gelu="erf", eps=1e-12)
    pre = Preprocessing(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], image_size=8,
                        channels=3, class_names=["cat", "dog", "fox"], resize_size=10,
                        center_crop=True)
    model = ViT(cfg, seed=3, preprocessing=pre)
    rng = np.random.default_rng(0)
    for v in model.params.values():
        v[...] = rng.standard_normal(v.shape) * 0.3
    return model


def test_the_sidecar_brings_back_what_the_layout_cannot_hold(tmp_path):
    """GELU, eps, class names and preprocessing go into NAME.minivit.json beside NAME.npz; both
    loaders read it back, so the model comes back with the same logits and labels; an override
    still wins; without the sidecar vit_jax's defaults apply, as before."""
    from minivit.io.google import sidecar_path
    from minivit.io.pretrained import load_pretrained
    model = _labelled_model()
    path = str(tmp_path / "m.npz")
    save_google_npz(model, path)
    assert os.path.exists(sidecar_path(path)) and sidecar_path(path).endswith("m.minivit.json")
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8))
    want = model.forward(x.astype(np.float32))
    for back in (load_google_npz(path), load_pretrained(path)):
        assert (back.config.gelu, back.config.eps) == ("erf", 1e-12)
        assert back.preprocessing == model.preprocessing
        np.testing.assert_allclose(back.forward(x.astype(np.float32)), want, atol=1e-6)
    assert load_google_npz(path, gelu="tanh").config.gelu == "tanh"
    os.remove(sidecar_path(path))
    bare = load_pretrained(path)
    assert (bare.config.gelu, bare.config.eps) == ("tanh", 1e-6)
    assert bare.preprocessing.class_names is None and bare.preprocessing.mean == [0.5] * 3


@pytest.mark.parametrize("text", ["{oops", "[1, 2]", '{"format": "something else"}',
                                  '{"format": "minivit: what a vit_jax .npz cannot hold", '
                                  '"gelu": "relu", "eps": 1e-6, "preprocessing": null}'])
def test_a_damaged_sidecar_is_one_clear_error(tmp_path, text):
    from minivit.io.google import sidecar_path
    path = str(tmp_path / "m.npz")
    save_google_npz(_labelled_model(), path)
    with open(sidecar_path(path), "w") as f:
        f.write(text)
    with pytest.raises(GoogleNpzError, match=r"m\.minivit\.json.*delete it"):
        load_google_npz(path)


def test_convert_to_google_and_back_keeps_labels_and_logits(tmp_path):
    from minivit.cli import io as io_cli
    from minivit.io.checkpoint import load_checkpoint, save_checkpoint
    model = _labelled_model()
    src, g, back = str(tmp_path / "m.npz"), str(tmp_path / "g.npz"), str(tmp_path / "back.npz")
    save_checkpoint(src, model)
    io_cli.main(["convert", src, g, "--to", "google"])
    io_cli.main(["convert", g, back, "--to", "minivit"])
    again = load_checkpoint(back)["model"]
    assert again.preprocessing == model.preprocessing and again.config == model.config
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(again.forward(x), model.forward(x), atol=1e-6)


def test_convert_flags_name_what_a_bare_google_file_lacks(tmp_path):
    from minivit.cli import io as io_cli
    from minivit.io.checkpoint import load_checkpoint
    from minivit.io.google import sidecar_path
    model = _labelled_model()
    g = str(tmp_path / "g.npz")
    save_google_npz(model, g)
    os.remove(sidecar_path(g))                            # as released: weights only
    (tmp_path / "labels.txt").write_text("cat\ndog\nfox\n\n")
    out = str(tmp_path / "m.npz")
    io_cli.main(["convert", g, out, "--to", "minivit", "--gelu", "erf", "--eps", "1e-12",
                 "--labels", str(tmp_path / "labels.txt")])
    got = load_checkpoint(out)["model"]
    assert (got.config.gelu, got.config.eps) == ("erf", 1e-12)
    assert got.preprocessing.class_names == ["cat", "dog", "fox"]
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="2 names for a model of 3 outputs"):
        io_cli.main(["convert", g, str(tmp_path / "n.npz"), "--to", "minivit", "--labels",
                     str(tmp_path / "two.txt")])


def test_hf_to_google_to_hf_keeps_gelu_eps_labels_and_logits(tmp_path):
    """The issue's round trip: a transformers folder (exact GELU, eps 1e-12, real labels) to a
    Google .npz and back to a transformers folder gives the same logits, labels and config."""
    pytest.importorskip("safetensors")
    from minivit.cli import io as io_cli
    from minivit.io.pretrained import load_pretrained, save_pretrained
    model = _labelled_model()
    hf, g, back = str(tmp_path / "hf"), str(tmp_path / "g.npz"), str(tmp_path / "back")
    save_pretrained(model, hf, format="hf")
    io_cli.main(["convert", hf, g, "--to", "google"])
    io_cli.main(["convert", g, back, "--to", "hf"])
    a, b = load_pretrained(hf), load_pretrained(back)
    assert (b.config.gelu, b.config.eps) == ("erf", 1e-12) and b.config == a.config
    assert b.preprocessing.class_names == ["cat", "dog", "fox"]
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(b.forward(x), a.forward(x), atol=1e-6)
