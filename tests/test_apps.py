"""Apps: image folders, the fine-tuning CLI, the prediction CLI and the attention maps
(rollout math, and the example script in --quick mode)."""
import importlib.util
import json
import os
import pathlib
import re
import sys

import numpy as np
import pytest

from minivit import ViT, ViTConfig, finetune_cli, io, predict
from minivit.attention_maps import attention_maps, attention_rollout, cls_maps, upsample
from minivit.checkpoint import load_checkpoint, save_checkpoint
from minivit.data import MNIST_MEAN, MNIST_STD, normalize
from minivit.imagefolder import (ImageFolderError, channel_stats, convert_channels,
                                 load_image_folder, read_image, resize_image)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_PIL = importlib.util.find_spec("PIL") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
needs_pil = pytest.mark.skipif(not HAS_PIL, reason="Pillow is not installed")
needs_mpl = pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed")
TINY = dict(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=1, heads=2)


def load_example(name: str):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def digit(label: int, size: int, rng) -> np.ndarray:
    """uint8 (size, size): noise plus a bright row band whose place encodes the label."""
    x = rng.integers(0, 50, (size, size)).astype(np.uint8)
    r = 1 + 2 * label
    x[r:r + 2, 1:size - 1] = 255
    return x


def make_folder(root, classes=("a", "b", "c"), n=5, size=8, seed=0) -> str:
    """root/<class>/<i>.npy with n uint8 (size, size) images per class."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(n):
            np.save(os.path.join(root, c, f"{i}.npy"), digit(k, size, rng))
    return str(root)


def save_png(path, arr: np.ndarray, mode=None) -> None:
    from PIL import Image
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)


# ---- image folders ------------------------------------------------------------------------------
def test_read_image_npy_layouts_and_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    hw = rng.integers(0, 256, (6, 6)).astype(np.uint8)
    rgb = rng.integers(0, 256, (3, 6, 6)).astype(np.uint8)
    cases = {"hw": (hw, hw[None]), "hw1": (hw[:, :, None], hw[None]), "chw1": (hw[None], hw[None]),
             "hwc": (np.moveaxis(rgb, 0, -1), rgb), "chw": (rgb, rgb),
             "int64": (hw.astype(np.int64), hw[None]),
             "float": (hw / 255.0, hw[None])}                        # [0, 1] floats, exact
    for name, (arr, want) in cases.items():
        np.save(tmp_path / f"{name}.npy", arr)
        got = read_image(tmp_path / f"{name}.npy")
        assert got.dtype == np.uint8 and np.array_equal(got, want), name
    bad = {"range.npy": np.full((4, 4), 1.5), "neg.npy": np.full((4, 4), -3, np.int16),
           "rgba.npy": np.zeros((4, 4, 4), np.uint8), "vec.npy": np.zeros(16, np.uint8),
           "nan.npy": np.full((4, 4), np.nan)}
    for name, arr in bad.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(ImageFolderError, match=re.escape(str(tmp_path / name))):
            read_image(tmp_path / name)
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(ImageFolderError, match=r"junk\.npy.*re-save"):
        read_image(tmp_path / "junk.npy")
    with pytest.raises(ImageFolderError, match="no such file"):
        read_image(tmp_path / "missing.npy")
    with pytest.raises(ImageFolderError, match="unsupported file type"):
        read_image(tmp_path / "x.bmp")


def test_folder_split_stats_and_determinism(tmp_path):
    root = make_folder(tmp_path / "data", classes=("b_dog", "a_cat", "c_eel"), n=5)
    ds = load_image_folder(root, test_fraction=0.2, seed=0)
    assert ds.class_names == ["a_cat", "b_dog", "c_eel"]                  # sorted
    assert ds.x_train.shape == (12, 1, 8, 8) and ds.x_test.shape == (3, 1, 8, 8)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_test).tolist() == [1, 1, 1]                 # round(5 * 0.2) per class
    assert np.bincount(ds.y_train).tolist() == [4, 4, 4]
    for x, y in zip(np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test])):
        # the label matches the class folder the image came from: the band's row encodes it
        band = {"a_cat": 1, "b_dog": 0, "c_eel": 2}[ds.class_names[y]]
        assert (x[0, 1 + 2 * band, 1:-1] == 255).all()
    pix = ds.x_train.astype(np.float64) / 255
    assert np.allclose(ds.mean, [pix.mean()]) and np.allclose(ds.std, [pix.std()])
    again = load_image_folder(root, test_fraction=0.2, seed=0)
    assert np.array_equal(again.x_test, ds.x_test)                       # seeded split
    splits = {load_image_folder(root, seed=s).x_test.tobytes() for s in range(4)}
    assert len(splits) > 1                                               # the seed matters
    json.dumps({"mean": ds.mean, "std": ds.std})                         # checkpoint-safe


def test_folder_given_split_and_channels(tmp_path):
    make_folder(tmp_path / "d" / "train", classes=("x", "y"), n=3)
    make_folder(tmp_path / "d" / "test", classes=("y",), n=2)
    ds = load_image_folder(tmp_path / "d")
    assert ds.class_names == ["x", "y"] and len(ds.x_train) == 6
    assert ds.y_test.tolist() == [1, 1]                                  # 'y' is class 1
    make_folder(tmp_path / "d" / "test", classes=("zz",), n=1)
    with pytest.raises(ImageFolderError, match=r"\['zz'\].*training"):
        load_image_folder(tmp_path / "d")
    # one RGB image among gray ones: channels=None gives 3 (gray repeated); channels=1: luma
    root = make_folder(tmp_path / "rgb", classes=("p", "q"), n=3)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    np.save(tmp_path / "rgb" / "p" / "color.npy", rgb)
    ds3 = load_image_folder(root, channels=None, test_fraction=0.3)
    assert ds3.x_train.shape[1] == 3 and len(ds3.mean) == 3
    gray = [x for x in ds3.x_train if not (x[0] == 100).all()]
    assert all(np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2]) for x in gray)
    ds1 = load_image_folder(root, channels=1, test_fraction=0.3)
    allx = np.concatenate([ds1.x_train, ds1.x_test])
    luma = round(0.299 * 100 + 0.587 * 200 + 0.114 * 50)                 # 153
    assert any((x == luma).all() for x in allx)


def test_folder_sizes_and_resize(tmp_path):
    root = make_folder(tmp_path / "d", classes=("a", "b"), n=3, size=8)
    np.save(tmp_path / "d" / "a" / "big.npy", np.full((12, 12), 77, np.uint8))
    with pytest.raises(ImageFolderError, match=r"2 different sizes.*12x12.*--image-size"):
        load_image_folder(root)
    ds = load_image_folder(root, image_size=6)
    assert ds.x_train.shape[1:] == (1, 6, 6)
    assert any((x == 77).all() for x in np.concatenate([ds.x_train, ds.x_test]))  # constant stays
    os.remove(tmp_path / "d" / "a" / "big.npy")
    for c in ("a", "b"):
        for f in os.listdir(tmp_path / "d" / c):
            np.save(tmp_path / "d" / c / f, np.zeros((8, 10), np.uint8))
    with pytest.raises(ImageFolderError, match=r"8x10.*not square.*--image-size"):
        load_image_folder(root)
    ramp = np.arange(4, dtype=np.uint8)[None, None].repeat(4, 1) * 60    # (1, 4, 4) columns 0..180
    assert np.array_equal(resize_image(ramp, 4), ramp)                   # same size: identity
    up = resize_image(ramp, 8)[0, 0]                                     # pixel-centre bilinear
    assert np.array_equal(up, [0, 15, 45, 75, 105, 135, 165, 180])


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFolderError, match="is empty"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(ImageFolderError, match="not a folder"):
        load_image_folder(tmp_path / "nope")
    make_folder(tmp_path / "one", classes=("only",), n=3)
    (tmp_path / "one" / "stray.npy").write_bytes(b"")
    with pytest.raises(ImageFolderError, match=r"1 class sub-folder.*at least 2.*stray\.npy"):
        load_image_folder(tmp_path / "one")
    root = make_folder(tmp_path / "d", classes=("a", "b"), n=3)
    (tmp_path / "d" / "c").mkdir()
    (tmp_path / "d" / "c" / "notes.txt").write_text("hi")
    with pytest.raises(ImageFolderError, match=r"class folder .*c has no images.*notes\.txt"):
        load_image_folder(root)
    os.remove(tmp_path / "d" / "c" / "notes.txt")
    os.rmdir(tmp_path / "d" / "c")
    (tmp_path / "d" / "b" / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ImageFolderError, match=re.escape(os.path.join("b", "broken.npy"))):
        load_image_folder(root)
    os.remove(tmp_path / "d" / "b" / "broken.npy")
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ImageFolderError, match="test_fraction"):
            load_image_folder(root, test_fraction=bad)
    with pytest.raises(ImageFolderError, match="channels"):
        load_image_folder(root, channels=2)
    make_folder(tmp_path / "single", classes=("a", "b"), n=1)
    with pytest.raises(ImageFolderError, match="no class has 2 images"):
        load_image_folder(tmp_path / "single")


def test_png_without_pillow_says_how_to_install(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", classes=("a", "b"), n=2)
    (tmp_path / "d" / "a" / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)                        # import PIL fails
    with pytest.raises(ImageFolderError, match=r"pic\.png.*Pillow.*pip install -e \.\[images\]"):
        load_image_folder(root)


@needs_pil
def test_png_folder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(1)
    imgs = {}
    for k, c in enumerate(("a", "b")):
        os.makedirs(tmp_path / "d" / c)
        for i in range(3):
            imgs[(c, i)] = digit(k, 8, rng)
            save_png(tmp_path / "d" / c / f"{i}.png", imgs[(c, i)])
    assert np.array_equal(read_image(tmp_path / "d" / "a" / "0.png"), imgs[("a", 0)][None])
    pal = Image.fromarray(imgs[("b", 0)]).convert("P")                    # gray palette: 1 channel
    pal.save(tmp_path / "d" / "b" / "pal.png")
    rgb = np.stack([imgs[("a", 1)]] * 2 + [np.zeros((8, 8), np.uint8)], -1)
    save_png(tmp_path / "rgb.png", rgb)
    assert read_image(tmp_path / "d" / "b" / "pal.png").shape == (1, 8, 8)
    assert np.array_equal(read_image(tmp_path / "rgb.png"), np.moveaxis(rgb, -1, 0))
    assert read_image(tmp_path / "rgb.png", image_size=4).shape == (3, 4, 4)
    ds = load_image_folder(tmp_path / "d", test_fraction=0.3)
    assert ds.x_train.shape[1:] == (1, 8, 8) and len(ds.x_train) + len(ds.x_test) == 7
    (tmp_path / "d" / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageFolderError, match=r"cannot read image .*bad\.png"):
        load_image_folder(tmp_path / "d")


def test_channel_stats_and_convert():
    x = np.zeros((2, 2, 3, 3), np.uint8)
    x[:, 0] = 255
    x[0, 1], x[1, 1] = 0, 51
    mean, std = channel_stats(x)
    assert mean == pytest.approx([1.0, 0.1]) and std == pytest.approx([1.0, 0.1])  # const: std 1
    g = np.full((1, 2, 2), 9, np.uint8)
    assert np.array_equal(convert_channels(g, 3), np.full((3, 2, 2), 9))
    with pytest.raises(ImageFolderError, match="2 channels"):
        convert_channels(g, 2)


# ---- predict ------------------------------------------------------------------------------------
@pytest.fixture
def tiny_ckpt(tmp_path):
    """A fresh tiny model with a larger random head (logits of std ~1), saved with metadata."""
    model = ViT(ViTConfig(**TINY), seed=3)
    model.params["head.w"][...] = np.random.default_rng(4).standard_normal((16, 4)) * 0.25
    path = str(tmp_path / "tiny.npz")
    save_checkpoint(path, model, extra={"class_names": ["w", "x", "y", "z"], "mean": [0.4],
                                        "std": [0.2]})
    return path, model


def manual_probs(model, imgs: np.ndarray, mean, std) -> np.ndarray:
    logits = model.forward(normalize(imgs, "float32", mean, std)).astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)                                   # (M, K)


def test_predict_npy_png_and_format(tiny_ckpt, tmp_path, capsys):
    path, model = tiny_ckpt
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    b = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    np.save(tmp_path / "a.npy", a)
    files, imgs = [str(tmp_path / "a.npy")], [a]
    if HAS_PIL:
        save_png(tmp_path / "b.png", b)
        files, imgs = files + [str(tmp_path / "b.png")], imgs + [b]
    res = predict.main(["--checkpoint", path, "--top-k", "3"] + files)
    want = manual_probs(model, np.stack(imgs)[:, None], 0.4, 0.2)
    wrong = manual_probs(model, np.stack(imgs)[:, None], MNIST_MEAN, MNIST_STD)
    assert np.abs(want - wrong).max() > 1e-3                             # normalization matters
    out = capsys.readouterr().out.splitlines()
    assert len(res) == len(files) and len(out) == 4 * len(files)
    for r, f, p in zip(res, files, want):
        assert r["file"] == f and len(r["top"]) == 3
        order = np.argsort(-p)[:3]
        assert [t["index"] for t in r["top"]] == order.tolist()
        assert [t["class"] for t in r["top"]] == [["w", "x", "y", "z"][i] for i in order]
        assert np.allclose([t["prob"] for t in r["top"]], p[order], atol=1e-5)
    assert out[0] == files[0]
    for line in out[1:4]:
        assert re.fullmatch(r"  [123]\. [wxyz]  [01]\.\d{4}", line), line
    res = predict.main(["--checkpoint", path, "--top-k", "10", files[0]])
    assert len(res[0]["top"]) == 4                                       # clamped to K
    assert sum(t["prob"] for t in res[0]["top"]) == pytest.approx(1.0, abs=1e-6)


def test_predict_size_resize_channels_and_defaults(tiny_ckpt, tmp_path, capsys):
    path, model = tiny_ckpt
    big = np.random.default_rng(6).integers(0, 256, (10, 10)).astype(np.uint8)
    np.save(tmp_path / "big.npy", big)
    with pytest.raises(ImageFolderError, match=r"big\.npy is 10x10 .* 8x8 .*--resize"):
        predict.main(["--checkpoint", path, str(tmp_path / "big.npy")])
    res = predict.main(["--checkpoint", path, "--resize", "--top-k", "4", str(tmp_path / "big.npy")])
    p = manual_probs(model, resize_image(big[None], 8)[None], 0.4, 0.2)[0]
    assert np.allclose([t["prob"] for t in sorted(res[0]["top"], key=lambda t: t["index"])], p,
                       atol=1e-5)
    rgb = np.random.default_rng(7).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    capsys.readouterr()
    res = predict.main(["--checkpoint", path, "--top-k", "4", str(tmp_path / "rgb.npy")])
    assert "RGB; converted to grayscale" in capsys.readouterr().err
    p = manual_probs(model, convert_channels(np.moveaxis(rgb, -1, 0), 1)[None], 0.4, 0.2)[0]
    assert np.allclose([t["prob"] for t in sorted(res[0]["top"], key=lambda t: t["index"])], p,
                       atol=1e-5)
    bare = str(tmp_path / "bare.npz")                                    # no class names/mean/std
    save_checkpoint(bare, model)
    np.save(tmp_path / "ok.npy", rgb[..., 0])
    res = predict.main(["--checkpoint", bare, "--top-k", "4", str(tmp_path / "ok.npy")])
    p = manual_probs(model, rgb[None, None, :, :, 0], MNIST_MEAN, MNIST_STD)[0]
    assert [t["class"] for t in res[0]["top"]] == [f"class {i}" for i in np.argsort(-p)]
    assert np.allclose([t["prob"] for t in res[0]["top"]], np.sort(p)[::-1], atol=1e-5)
    (tmp_path / "junk.png").write_bytes(b"nope")
    with pytest.raises(ImageFolderError, match=r"junk\.png"):
        predict.main(["--checkpoint", path, str(tmp_path / "junk.png")])


# ---- fine-tuning --------------------------------------------------------------------------------
def test_finetune_head_only_from_google_npz(tmp_path, capsys):
    src = ViT(ViTConfig(**{**TINY, "num_classes": 5}), seed=1)
    npz = str(tmp_path / "pre.npz")
    io.save_google_npz(src, npz)
    data = make_folder(tmp_path / "imgs", classes=("c0", "c1", "c2"), n=12, size=12)
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"12x12 but the model takes 8x8.*--image-size"):
        finetune_cli.main(["--npz", npz, "--data", data, "--out", out, "--quiet"])
    capsys.readouterr()
    summary = finetune_cli.main(["--npz", npz, "--data", data, "--image-size", "12", "--head-only",
                                 "--epochs", "2", "--batch-size", "9", "--lr", "0.05",
                                 "--warmup-epochs", "0", "--no-augment", "--quiet", "--out", out])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    assert summary["classes"] == 3 and summary["head_only"] and summary["epochs"] == 2
    for name in ("last.npz", "best.npz", "metrics.jsonl", "config.json", "curves.png"):
        assert os.path.exists(os.path.join(out, name)), name
    meta = load_checkpoint(os.path.join(out, "last.npz"))
    tuned, ref = meta["model"], io.load_google_npz(npz, image_size=12)  # pos table resampled too
    assert tuned.config.num_classes == 3 and tuned.config.image_size == 12
    frozen = [k for k in ref.params if not k.startswith("head.")]
    assert frozen and all(np.array_equal(tuned.params[k], ref.params[k]) for k in frozen)
    assert tuned.params["head.w"].shape == (16, 3) and np.abs(tuned.params["head.w"]).max() > 0
    assert meta["extra"]["class_names"] == ["c0", "c1", "c2"]
    assert meta["extra"]["mean"] == pytest.approx(channel_stats(load_image_folder(data).x_train)[0])
    cfg = json.loads(pathlib.Path(out, "config.json").read_text())
    assert sorted(cfg["train"]["frozen"]) == sorted(frozen)
    img = os.path.join(data, "c1", "0.npy")
    res = predict.main(["--checkpoint", os.path.join(out, "best.npz"), "--top-k", "2", img])
    assert res[0]["top"][0]["class"] in ("c0", "c1", "c2")


def test_finetune_all_params_from_checkpoint(tmp_path, capsys):
    model = ViT(ViTConfig(**TINY), seed=2)
    ckpt = str(tmp_path / "pre.npz")
    save_checkpoint(ckpt, model)
    data = make_folder(tmp_path / "imgs", classes=("p", "q"), n=8, size=8)
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match="--gelu applies to --npz only"):
        finetune_cli.main(["--checkpoint", ckpt, "--data", data, "--gelu", "erf"])
    finetune_cli.main(["--checkpoint", ckpt, "--data", data, "--epochs", "1", "--batch-size", "6",
                       "--quiet", "--out", out])
    tuned = load_checkpoint(os.path.join(out, "last.npz"))["model"]
    assert tuned.config.num_classes == 2
    assert not np.array_equal(tuned.params["blocks.0.attn.qkv.w"], model.params["blocks.0.attn.qkv.w"])
    assert load_example("finetune").main is finetune_cli.main          # the example is thin


# ---- attention maps -----------------------------------------------------------------------------
def softmax_rows(rng, *shape):
    z = rng.standard_normal(shape)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_rollout_identity_and_rows_sum_to_one():
    B, H, N = 2, 3, 5
    eye = np.broadcast_to(np.eye(N), (B, H, N, N))
    assert np.allclose(attention_rollout([eye, eye, eye]), np.eye(N))
    rng = np.random.default_rng(0)
    attn = [softmax_rows(rng, B, H, N, N) for _ in range(3)]
    R = attention_rollout(attn)
    assert R.shape == (B, N, N) and np.allclose(R.sum(-1), 1.0) and (R >= 0).all()
    a1, a2 = [(a.mean(1) + np.eye(N)) / 2 for a in attn[:2]]              # rownorm(A + I) = (A + I)/2
    two = attention_rollout(attn[:2])
    assert np.allclose(two, a2 @ a1)                                     # later layer on the left
    assert not np.allclose(two, a1 @ a2)
    assert np.allclose(attention_rollout(attn[:1], add_identity=False), attn[0].mean(1))


def test_cls_maps_and_model_attention():
    A = np.arange(2 * 5 * 5, dtype=float).reshape(2, 5, 5)
    assert np.array_equal(cls_maps(A, 2), A[:, 0, 1:].reshape(2, 2, 2))
    with pytest.raises(ValueError, match="3x3 grid"):
        cls_maps(A, 3)
    assert np.allclose(upsample(np.ones((1, 2, 2)), 8), 1.0)
    model = ViT(ViTConfig(**{**TINY, "depth": 2}), seed=0)
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    res = attention_maps(model, x)
    assert res["layers"].shape == (3, 2, 2, 2) and res["rollout"].shape == (3, 2, 2)
    _, attn = model.forward(x, return_attention=True)
    cls_self = np.stack([a.mean(1)[:, 0, 0] for a in attn], 1)           # (B, L)
    assert np.allclose(res["layers"].sum((2, 3)) + cls_self, 1.0, atol=1e-5)


@needs_mpl
def test_attention_example_quick_writes_png(tmp_path, capsys):
    mod = load_example("attention_maps")
    png = tmp_path / "att.png"
    res = mod.main(["--quick", "--out", str(png)])
    assert res["out"] == str(png) and res["layers"].shape == (3, 2, 4, 4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rollout" in capsys.readouterr().out


def test_attention_example_without_matplotlib(tmp_path, monkeypatch, capsys):
    mod = load_example("attention_maps")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    res = mod.main(["--quick", "--num-images", "2", "--out", str(tmp_path / "att.png")])
    out = capsys.readouterr().out
    assert res["out"] is None and not (tmp_path / "att.png").exists()
    assert "matplotlib is not installed" in out and "image 1:" in out
    with pytest.raises(ValueError, match="--checkpoint"):
        mod.main([])
