"""The prediction command: .npy and PNG inputs, top-k output, resizing, channel conversion, and
the model's Preprocessing (or --mean/--std) for normalization."""
import re

import numpy as np
import pytest

from minivit import Preprocessing, ViT, ViTConfig
from minivit.cli import predict
from minivit.data.batches import normalize
from minivit.data.imagefolder import (ImageFolderError, convert_channels, resize_image)
from minivit.data.mnist import MNIST_MEAN, MNIST_STD
from minivit.io.checkpoint import save_checkpoint

from conftest import has

TINY = dict(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=1, heads=2)


def save_png(path, arr: np.ndarray, mode=None) -> None:
    from PIL import Image
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A fresh tiny model with a larger random head (logits of std ~1), saved with metadata."""
    model = ViT(ViTConfig(**TINY), seed=3)
    model.params["head.w"][...] = np.random.default_rng(4).standard_normal((16, 4)) * 0.25
    model.preprocessing = Preprocessing(mean=[0.4], std=[0.2], image_size=8, channels=1,
                                        class_names=["w", "x", "y", "z"])
    path = str(tmp_path / "tiny.npz")
    save_checkpoint(path, model)
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
    if has("PIL"):
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
    model.preprocessing = None
    save_checkpoint(bare, model)
    np.save(tmp_path / "ok.npy", rgb[..., 0])
    with pytest.raises(ValueError, match="records no normalization.*--mean and --std"):
        predict.main(["--checkpoint", bare, str(tmp_path / "ok.npy")])
    res = predict.main(["--checkpoint", bare, "--top-k", "4", "--mean", str(MNIST_MEAN),
                        "--std", str(MNIST_STD), "--", str(tmp_path / "ok.npy")])
    p = manual_probs(model, rgb[None, None, :, :, 0], MNIST_MEAN, MNIST_STD)[0]
    assert [t["class"] for t in res[0]["top"]] == [f"class {i}" for i in np.argsort(-p)]
    assert np.allclose([t["prob"] for t in res[0]["top"]], np.sort(p)[::-1], atol=1e-5)
    (tmp_path / "junk.png").write_bytes(b"nope")
    with pytest.raises(ImageFolderError, match=r"junk\.png"):
        predict.main(["--checkpoint", path, str(tmp_path / "junk.png")])
