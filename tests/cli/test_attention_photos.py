"""minivit-attention on photos: the model's preprocessing, one grid or one PNG per image (names
that do not collide, existing ones refused before anything is computed), titles with the file
name and the top class (none for a model without a head), the numbers without matplotlib, and
a real PNG for a transformers-layout model written by minivit's own save_pretrained. MNIST
(no images) stays the default. Drawing is stubbed except in the real-PNG test; every image is
made here."""
import os
import sys

import numpy as np
import pytest

from minivit import Preprocessing, ViT, ViTConfig
from minivit.analysis.attention import attention_maps
from minivit.cli import attention
from minivit.data.batches import normalize
from minivit.io.checkpoint import save_checkpoint

from conftest import has, randomize_params

TINY = dict(image_size=8, patch_size=4, in_channels=3, num_classes=3, dim=16, depth=2, heads=2)
NAMES = ["tabby, tabby cat", "a very long class name that cannot fit", "rocket"]


def save_model(path, **over) -> ViT:
    model = ViT(ViTConfig(**{**TINY, **over}), seed=0)
    randomize_params(model, 1)
    model.preprocessing = Preprocessing(mean=[0.5] * 3, std=[0.25] * 3, image_size=8,
                                        channels=3, class_names=NAMES if model.config.num_classes
                                        else None)
    save_checkpoint(str(path), model)
    return model


def npy_photos(folder, names, seed=0) -> list:
    """uint8 (8, 8, 3) .npy images at the given names (sub-folders made)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in names:
        p = os.path.join(folder, n)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        np.save(p, rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
        out.append(p)
    return out


@pytest.fixture
def drawn(monkeypatch):
    """Stub the drawing: records (kind, path, title(s)) instead of writing PNGs."""
    calls = []
    monkeypatch.setattr(attention, "pyplot", lambda: object())
    monkeypatch.setattr(attention, "render", lambda x, labels, res, path, names=None,
                        titles=None: calls.append(("grid", path, titles, x.shape)) or True)
    monkeypatch.setattr(attention, "render_image", lambda img, res, i, path, title:
                        calls.append(("one", path, title, img.shape)) or True)
    return calls


def test_one_png_per_image_with_titles_and_the_models_maps(tmp_path, drawn, capsys):
    model = save_model(tmp_path / "m.npz")
    paths = npy_photos(tmp_path / "photos", ["cat.npy", os.path.join("b", "cat.npy"), "x.npy"])
    out = tmp_path / "maps"
    res = attention.main(["--model", str(tmp_path / "m.npz"), str(tmp_path / "photos"),
                          "--out", str(out)])
    want_paths = [paths[1], paths[0], paths[2]]                          # a folder's sorted order
    assert res["paths"] == want_paths
    names = ["cat.attention.png", "cat-2.attention.png", "x.attention.png"]
    assert [c[1] for c in drawn] == [str(out / n) for n in names] == res["out"]
    x = normalize(np.stack([np.moveaxis(np.load(p), -1, 0) for p in want_paths]), "float32",
                  [0.5] * 3, [0.25] * 3)
    direct = attention_maps(model, x)
    np.testing.assert_allclose(res["rollout"], direct["rollout"], atol=1e-6)
    np.testing.assert_allclose(res["layers"], direct["layers"], atol=1e-6)
    top = direct["probs"].argmax(1)
    for (_, _, title, shape), t, p in zip(drawn, top, want_paths):
        assert shape == (3, 8, 8)
        assert title.startswith(os.path.basename(p) + ": ") and NAMES[t] in title
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{want_paths[0]}: predicted ") and lines[0].endswith(
        f"-> {out / names[0]}")
    # every existing output is refused before anything is computed; --overwrite replaces
    (out / names[1]).parent.mkdir(exist_ok=True)
    (out / names[1]).write_bytes(b"mine")
    drawn.clear()
    with pytest.raises(ValueError, match=r"--out .*cat-2\.attention\.png exists .*--overwrite"):
        attention.main(["--model", str(tmp_path / "m.npz"), str(tmp_path / "photos"),
                        "--out", str(out)])
    assert drawn == [] and (out / names[1]).read_bytes() == b"mine"
    attention.main(["--model", str(tmp_path / "m.npz"), str(tmp_path / "photos"), "--out",
                    str(out), "--overwrite", "--quiet"])
    assert len(drawn) == 3 and capsys.readouterr().out == ""


def test_one_grid_for_a_headless_model_with_registers(tmp_path, drawn, capsys):
    save_model(tmp_path / "dino.npz", num_classes=0, num_registers=2, layer_scale=0.5)
    paths = npy_photos(tmp_path, ["a_rather_long_photo_file_name_here.npy", "b.npy"])
    grid = tmp_path / "grid.PNG"
    res = attention.main(["--model", str(tmp_path / "dino.npz"), *paths, "--out", str(grid)])
    assert res["out"] == str(grid) and res["probs"] is None
    assert res["layers"].shape == (2, 2, 2, 2) and res["rollout"].shape == (2, 2, 2)
    (kind, path, titles, shape), = drawn
    assert (kind, path, shape) == ("grid", str(grid), (2, 3, 8, 8))
    assert titles == ["a_rather_long_photo_f\u2026", "b.npy"]              # no prediction line
    assert "no classifier head" in capsys.readouterr().out


def test_without_matplotlib_the_numbers_are_printed(tmp_path, monkeypatch, capsys):
    save_model(tmp_path / "m.npz")
    paths = npy_photos(tmp_path, ["a.npy"])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    res = attention.main(["--model", str(tmp_path / "m.npz"), *paths, "--out",
                          str(tmp_path / "a.png")])
    out = capsys.readouterr().out
    assert res["out"] is None and not (tmp_path / "a.png").exists()
    assert "matplotlib is not installed" in out
    assert f"image 0 ({paths[0]}): predicted " in out and "rollout over the 2^2 patches" in out


def test_errors_and_the_mnist_default(tmp_path, drawn, capsys, monkeypatch):
    save_model(tmp_path / "m.npz")
    paths = npy_photos(tmp_path, ["a.npy"])
    with pytest.raises(ValueError, match="pass --model PATH with the images"):
        attention.main([*paths])
    with pytest.raises(ValueError, match="--data .* names MNIST's folder"):
        attention.main(["--model", str(tmp_path / "m.npz"), "--data", str(tmp_path), *paths])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="does not end in .png"):
        attention.main(["--model", str(tmp_path / "m.npz"), *paths, "--out",
                        str(tmp_path / "notes.txt")])
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)
    np.save(tmp_path / "big.npy", np.zeros((10, 10, 3), np.uint8))       # no resize: skipped
    monkeypatch.setattr(sys, "argv", ["minivit-attention", "--model", str(tmp_path / "m.npz"),
                                      paths[0], str(tmp_path / "big.npy"), "--out",
                                      str(tmp_path / "g.png")])
    with pytest.raises(SystemExit) as e:
        attention.entry()
    assert e.value.code == 1 and "big.npy is 10x10" in capsys.readouterr().err
    drawn.clear()
    res = attention.main(["--quick", "--out", str(tmp_path / "q.png")])    # MNIST, as before
    assert res["labels"].shape == (3,) and res["layers"].shape == (3, 2, 4, 4)
    assert drawn[0][:3] == ("grid", str(tmp_path / "q.png"), None)
    assert "image 2: label " in capsys.readouterr().out


@pytest.mark.skipif(not all(has(m) for m in ("matplotlib", "PIL", "safetensors")),
                    reason="needs matplotlib, Pillow and safetensors (pip install -e "
                           ".[plot,images,hub])")
def test_real_pngs_for_a_photo_with_a_transformers_model(tmp_path, capsys):
    from PIL import Image

    from minivit.io import load_pretrained, save_pretrained
    model = ViT(ViTConfig(image_size=16, patch_size=8, in_channels=3, num_classes=3, dim=16,
                          depth=2, heads=2), seed=0)
    model.preprocessing = Preprocessing(mean=[0.5] * 3, std=[0.5] * 3, image_size=16,
                                        channels=3, class_names=NAMES, resize_size=20,
                                        resize_mode="shortest", center_crop=True)
    save_pretrained(model, tmp_path / "vit", format="hf")
    assert load_pretrained(tmp_path / "vit").preprocessing.center_crop
    rng = np.random.default_rng(0)
    photo = tmp_path / "holiday photo.jpg"
    Image.fromarray(rng.integers(0, 256, (30, 45, 3)).astype(np.uint8)).save(photo)
    res = attention.main(["--model", str(tmp_path / "vit"), str(photo), "--out",
                          str(tmp_path / "att.png")])
    assert res["rollout"].shape == (1, 2, 2) and res["probs"].shape == (1, 3)
    assert (tmp_path / "att.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = attention.main(["--model", str(tmp_path / "vit"), str(photo), "--out",
                          str(tmp_path / "maps")])
    png = tmp_path / "maps" / "holiday photo.attention.png"
    assert res["out"] == [str(png)] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path / "maps")) == [png.name]           # no temporary file left
