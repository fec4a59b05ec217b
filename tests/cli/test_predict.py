"""The prediction command: files and folders of photos in every format Pillow reads (and .npy),
top-k output as text, --json and --csv, the model's Preprocessing (or --mean/--std), resizing and
channel conversion; unreadable images skipped with exit status 1; bad flags refused up front.
Also minivit/data/photos.py, the reading it stands on: transparency, first frames, EXIF
orientation, 16-bit gray. Every image is made here, small; nothing is read from outside."""
import csv
import json
import os
import re
import sys

import numpy as np
import pytest

from minivit import Preprocessing, ViT, ViTConfig
from minivit.cli import predict, run
from minivit.data import photos
from minivit.data.batches import normalize
from minivit.data.imagefolder import convert_channels, resize_image
from minivit.data.mnist import MNIST_MEAN, MNIST_STD
from minivit.io.checkpoint import save_checkpoint

from conftest import has, needs_pil

TINY = dict(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=1, heads=2)
RGB = dict(TINY, in_channels=3, num_classes=5)
NAMES = ["w", "x", "y", "z"]
RGB_NAMES = ["tabby cat", "coffee mug", "rocket", "camera", "astronaut"]


def save_png(path, arr: np.ndarray, mode=None) -> None:
    from PIL import Image
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)


def pixels(shape, seed) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A fresh tiny model with a larger random head (logits of std ~1), saved with metadata."""
    model = ViT(ViTConfig(**TINY), seed=3)
    model.params["head.w"][...] = np.random.default_rng(4).standard_normal((16, 4)) * 0.25
    model.preprocessing = Preprocessing(mean=[0.4], std=[0.2], image_size=8, channels=1,
                                        class_names=NAMES)
    path = str(tmp_path / "tiny.npz")
    save_checkpoint(path, model)
    return path, model


@pytest.fixture
def rgb_ckpt(tmp_path):
    """A tiny RGB classifier whose preprocessing resizes any photo to 8 x 8 (as a transformers
    ViT's does), with real-looking class names."""
    model = ViT(ViTConfig(**RGB), seed=5)
    model.params["head.w"][...] = np.random.default_rng(6).standard_normal((16, 5)) * 0.5
    model.preprocessing = Preprocessing(mean=[0.5] * 3, std=[0.25] * 3, image_size=8, channels=3,
                                        class_names=RGB_NAMES, resize_size=8)
    path = str(tmp_path / "rgb.npz")
    save_checkpoint(path, model)
    return path, model


def manual_probs(model, imgs: np.ndarray, mean, std) -> np.ndarray:
    logits = model.forward(normalize(imgs, "float32", mean, std)).astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)                                   # (M, K)


def by_index(top: list) -> np.ndarray:
    return np.array([t["prob"] for t in sorted(top, key=lambda t: t["index"])])


def test_predict_npy_png_and_format(tiny_ckpt, tmp_path, capsys):
    path, model = tiny_ckpt
    a, b = pixels((8, 8), 5), pixels((8, 8), 15)
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
    assert len(res) == len(files) and len(out) == 4 * len(files) and res.skipped == []
    for r, f, p in zip(res, files, want):
        assert r["path"] == r["file"] == f and len(r["top"]) == 3
        order = np.argsort(-p)[:3]
        assert [t["index"] for t in r["top"]] == order.tolist()
        assert [t["label"] for t in r["top"]] == [NAMES[i] for i in order]
        assert [t["class"] for t in r["top"]] == [NAMES[i] for i in order]   # the old name
        assert np.allclose([t["prob"] for t in r["top"]], p[order], atol=1e-5)
    assert out[0] == files[0]
    for line in out[1:4]:
        assert re.fullmatch(r"  [123]\. [wxyz]  [01]\.\d{4}", line), line
    res = predict.main(["--checkpoint", path, "--top-k", "10", files[0]])
    assert len(res[0]["top"]) == 4                                       # clamped to K
    assert "--top-k 10 is more than the model's 4 classes; showing 4" in capsys.readouterr().err
    assert sum(t["prob"] for t in res[0]["top"]) == pytest.approx(1.0, abs=1e-6)


def test_predict_size_resize_channels_and_defaults(tiny_ckpt, tmp_path, capsys):
    path, model = tiny_ckpt
    big = pixels((10, 10), 6)
    np.save(tmp_path / "big.npy", big)
    res = predict.main(["--checkpoint", path, str(tmp_path / "big.npy")])
    assert len(res) == 0 and len(res.skipped) == 1                       # skipped, with the fix
    assert re.search(r"big\.npy is 10x10 .* 8x8 .*--resize", res.skipped[0][1])
    assert re.search(r"skipped: .*big\.npy is 10x10", capsys.readouterr().err)
    res = predict.main(["--checkpoint", path, "--resize", "--top-k", "4",
                        str(tmp_path / "big.npy")])
    p = manual_probs(model, resize_image(big[None], 8)[None], 0.4, 0.2)[0]
    assert np.allclose(by_index(res[0]["top"]), p, atol=1e-5)
    rgb = pixels((8, 8, 3), 7)
    np.save(tmp_path / "rgb.npy", rgb)
    capsys.readouterr()
    res = predict.main(["--checkpoint", path, "--top-k", "4", str(tmp_path / "rgb.npy")])
    assert "note: 1 RGB image converted to grayscale for the 1-channel model" in \
        capsys.readouterr().err
    p = manual_probs(model, convert_channels(np.moveaxis(rgb, -1, 0), 1)[None], 0.4, 0.2)[0]
    assert np.allclose(by_index(res[0]["top"]), p, atol=1e-5)
    bare = str(tmp_path / "bare.npz")                                    # no class names/mean/std
    model.preprocessing = None
    save_checkpoint(bare, model)
    np.save(tmp_path / "ok.npy", rgb[..., 0])
    with pytest.raises(ValueError, match="records no normalization.*--mean and --std"):
        predict.main(["--checkpoint", bare, str(tmp_path / "ok.npy")])
    want = manual_probs(model, rgb[None, None, :, :, 0], MNIST_MEAN, MNIST_STD)[0]
    for sep in (["--"], []):                   # one value per flag: `--` is no longer needed
        res = predict.main(["--checkpoint", bare, "--top-k", "4", "--mean", str(MNIST_MEAN),
                            "--std", str(MNIST_STD), *sep, str(tmp_path / "ok.npy")])
        assert [t["label"] for t in res[0]["top"]] == [f"class {i}" for i in np.argsort(-want)]
        assert np.allclose([t["prob"] for t in res[0]["top"]], np.sort(want)[::-1], atol=1e-5)
    junk = [tmp_path / "junk.npy"] + ([tmp_path / "junk.png"] if has("PIL") else [])
    for j in junk:
        j.write_bytes(b"nope")
    res = predict.main(["--checkpoint", path, *map(str, junk)])
    assert [s[0] for s in res.skipped] == list(map(str, junk)) and len(res) == 0


def photo_folder(root) -> list:
    """Photos in the formats users bring, nested, with what a folder walk must leave out;
    returns the paths the walk must find, in order (a broken JPEG among them)."""
    from PIL import Image
    (root / "album" / "trip").mkdir(parents=True)
    (root / "album" / ".thumbs").mkdir()
    rgb = pixels((20, 30, 3), 1)
    save_png(root / "album" / "a.png", rgb)
    Image.fromarray(rgb).save(root / "album" / "b.JPG", quality=90)
    Image.fromarray(pixels((16, 12, 3), 2)).save(root / "album" / "c.webp")
    save_png(root / "album" / "d_gray.png", pixels((12, 12), 3))
    rgba = np.concatenate([pixels((10, 14, 3), 4), np.full((10, 14, 1), 128, np.uint8)], -1)
    save_png(root / "album" / "e_rgba.png", rgba)
    Image.fromarray(pixels((9, 9, 3), 5)).save(root / "album" / "trip" / "f.bmp")
    Image.fromarray(pixels((9, 11, 3), 6)).save(root / "album" / "trip" / "g.tif")
    (root / "album" / "trip" / "h_broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    np.save(root / "album" / "trip" / "i.npy", pixels((8, 8, 3), 7))
    save_png(root / "album" / ".hidden.png", rgb)                        # left out: hidden
    save_png(root / "album" / ".thumbs" / "t.png", rgb)                  # left out: hidden folder
    (root / "album" / "notes.txt").write_text("not an image")            # left out: not an image
    names = ["a.png", "b.JPG", "c.webp", "d_gray.png", "e_rgba.png", "trip/f.bmp", "trip/g.tif",
             "trip/h_broken.jpg", "trip/i.npy"]
    return [os.path.join(str(root / "album"), *n.split("/")) for n in names]


@needs_pil
def test_folders_of_photos_json_output_and_skips(rgb_ckpt, tmp_path, capsys, monkeypatch):
    """A nested folder of PNG, JPEG, WebP, gray, RGBA, BMP, TIFF and .npy images plus a broken
    file: --json prints exactly one record per readable image, in sorted walk order, with the
    probabilities an independent reading gives; the broken file is reported and skipped, and
    the console script's exit status is 1."""
    from PIL import Image
    path, model = rgb_ckpt
    want_paths = photo_folder(tmp_path)
    found, missing = photos.find_images([str(tmp_path / "album")])
    assert found == want_paths and missing == []
    res = predict.main(["--model", path, "--json", "--top-k", "3", str(tmp_path / "album")])
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]   # nothing but JSON
    readable = [p for p in want_paths if "broken" not in p]
    assert [r["path"] for r in records] == readable == [r["path"] for r in res]
    for r in records:
        assert set(r) == {"path", "top"} and len(r["top"]) == 3
        assert all(set(t) == {"label", "index", "prob"} for t in r["top"])
        assert all(isinstance(t["label"], str) and isinstance(t["index"], int)
                   and isinstance(t["prob"], float) for t in r["top"])
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True)
        assert [t["label"] for t in r["top"]] == [RGB_NAMES[t["index"]] for t in r["top"]]
    err = captured.err
    assert re.search(r"skipped: cannot read image .*h_broken\.jpg", err)
    assert "predict: 8 of 9 images, 1 skipped (reasons above)" in err.splitlines()[-1]
    assert "note: 1 grayscale image converted to RGB" in err
    # independently: Pillow's RGB (transparency over white), then the square bilinear resize
    for name in ("a.png", "e_rgba.png", "d_gray.png"):
        im = Image.open(tmp_path / "album" / name)
        if im.mode == "RGBA":
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255,) * 4), im)
        img = np.asarray(im.convert("RGB").resize((8, 8), Image.BILINEAR)).transpose(2, 0, 1)
        p = manual_probs(model, img[None], 0.5, 0.25)[0]
        rec = records[readable.index(str(tmp_path / "album" / name))]
        assert [t["index"] for t in rec["top"]] == np.argsort(-p, kind="stable")[:3].tolist()
        assert np.allclose([t["prob"] for t in rec["top"]], np.sort(p)[::-1][:3], atol=1e-6)
    # the console script: still prints the others, exit status 1
    monkeypatch.setattr(sys, "argv", ["minivit-predict", "--model", path, "--json",
                                      str(tmp_path / "album"), str(tmp_path / "nowhere.png")])
    with pytest.raises(SystemExit) as e:
        predict.entry()
    captured = capsys.readouterr()
    assert e.value.code == 1 and len(captured.out.splitlines()) == 8
    assert "nowhere.png: no such file or folder" in captured.err
    assert "predict: 8 of 10 images, 2 skipped" in captured.err
    monkeypatch.setattr(sys, "argv", ["minivit-predict", "--model", path, want_paths[0]])
    predict.entry()                                                      # nothing skipped: 0


@needs_pil
def test_csv_written_atomically_and_not_overwritten(rgb_ckpt, tmp_path, capsys):
    path, model = rgb_ckpt
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        save_png(folder / f"p{i}.png", pixels((9, 13, 3), 20 + i))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "top1.csv"
    res = predict.main(["--model", path, "--csv", str(out), "--quiet", str(folder)])
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["path", "label", "prob"] and len(rows) == 4 and len(res.skipped) == 1
    for (p, label, prob), r in zip(rows[1:], res):
        assert p == r["path"] and label == r["top"][0]["label"]
        assert float(prob) == pytest.approx(r["top"][0]["prob"], abs=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["pics", "rgb.npz", "top1.csv"]   # no temp file left
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(predict.main, ["--model", path, "--csv", str(out), str(folder)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: --csv {out} exists (a file)")
    assert "--overwrite" in err.splitlines()[0]
    before = out.read_text()
    (folder / "p0.png").unlink()
    predict.main(["--model", path, "--csv", str(out), "--overwrite", str(folder)])
    assert out.read_text() != before and len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "-3"], "argument --batch-size: takes an integer >= 1, got '-3'"),
    (["--batch-size", "0"], "argument --batch-size: takes an integer >= 1, got '0'"),
    (["--top-k", "0"], "argument --top-k: takes an integer >= 1, got '0'"),
    (["--top-k", "two"], "argument --top-k: takes an integer >= 1, got 'two'"),
    (["--mean", "abc"], "argument --mean: takes one number or one per channel separated by "
                        "commas (0.485,0.456,0.406), got 'abc'"),
    (["--std", "0.5,0"], "argument --std: takes numbers > 0 (one, or one per channel separated "
                         "by commas), got '0.5,0'"),
    (["--mean", "0.5", "0.5", "0.5"], "'0.5' is given as an image but is a number: --mean and "
                                      "--std take ONE value"),
])
def test_bad_flags_are_one_line_before_any_work(tiny_ckpt, tmp_path, capsys, flags, message):
    """Refused at parsing (exit 2), before the model is read: one line naming the flag, the
    value and what it takes, then a pointer to --help."""
    np.save(tmp_path / "a.npy", pixels((8, 8), 1))
    with pytest.raises(SystemExit) as e:
        predict.main(["--model", str(tmp_path / "not-read.npz"), *flags, str(tmp_path / "a.npy")])
    captured = capsys.readouterr()
    assert e.value.code == 2 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 2 and f"error: {message}" in lines[0] and "--help" in lines[1], lines


def test_mean_std_count_and_outputs_checked_before_the_run(tiny_ckpt, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)
    path, _ = tiny_ckpt
    np.save(tmp_path / "a.npy", pixels((8, 8), 1))
    for flags, message in (
            (["--mean", "0.1,0.2"], "--mean has 2 values for the model's 1 channel(s)"),
            (["--csv", str(tmp_path)], f"--csv {tmp_path} is a folder; give a file name")):
        with pytest.raises(SystemExit) as e:
            run(predict.main, ["--model", path, *flags, str(tmp_path / "a.npy")])
        captured = capsys.readouterr()
        assert e.value.code == 2 and captured.out == ""
        assert captured.err.startswith(f"error: {message}"), captured.err


def test_no_images_and_headless_models_are_errors(tiny_ckpt, tmp_path):
    path, model = tiny_ckpt
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing to see")
    with pytest.raises(ValueError, match="no images found in .*empty"):
        predict.main(["--model", path, str(tmp_path / "empty")])
    headless = str(tmp_path / "headless.npz")
    save_checkpoint(headless, ViT(ViTConfig(**dict(TINY, num_classes=0)), seed=1))
    np.save(tmp_path / "a.npy", pixels((8, 8), 1))
    with pytest.raises(ValueError, match="no classifier head.*minivit-embed"):
        predict.main(["--model", headless, "--mean", "0.5", "--std", "0.5",
                      str(tmp_path / "a.npy")])


def test_without_pillow_image_files_are_one_clear_error(tiny_ckpt, tmp_path, monkeypatch):
    path, _ = tiny_ckpt
    (tmp_path / "a.png").write_bytes(b"whatever")
    (tmp_path / "b.jpg").write_bytes(b"whatever")
    np.save(tmp_path / "c.npy", pixels((8, 8), 1))
    monkeypatch.setattr(photos, "pillow", lambda: None)
    with pytest.raises(ValueError, match=r"a\.png \(and 1 more image files\): reading image "
                                         r"files needs Pillow.*pip install -e \.\[images\]"):
        predict.main(["--model", path, str(tmp_path)])
    res = predict.main(["--model", path, str(tmp_path / "c.npy")])      # .npy needs no Pillow
    assert len(res) == 1


# ---- reading photos (minivit/data/photos.py) ----------------------------------------------------
@needs_pil
def test_read_photo_transparency_frames_orientation_and_16_bit(tmp_path):
    from PIL import Image
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)                     # fully transparent red: white
    rgba[0, 1] = (255, 0, 0, 255)                   # opaque red: red
    rgba[0, 2] = (0, 0, 255, 128)                   # half blue over white
    rgba[1] = (10, 20, 30, 255)
    save_png(tmp_path / "t.png", rgba)
    img = photos.read_photo(tmp_path / "t.png")
    assert img.shape == (3, 2, 3) and img.dtype == np.uint8
    assert img[:, 0, 0].tolist() == [255, 255, 255] and img[:, 0, 1].tolist() == [255, 0, 0]
    assert img[2, 0, 2] == 255 and abs(int(img[0, 0, 2]) - 127) <= 1
    la = Image.fromarray(np.array([[[0, 0], [40, 255]]], np.uint8), mode="LA")
    la.save(tmp_path / "la.png")
    assert photos.read_photo(tmp_path / "la.png").tolist() == [[[255, 40]]]   # gray over white
    frames = [Image.fromarray(np.full((4, 5, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    gif = photos.read_photo(tmp_path / "anim.gif")
    assert gif.shape[1:] == (4, 5) and int(gif.max()) <= 20              # the first frame
    tall = pixels((6, 4, 3), 9)                     # stored 6x4, EXIF: rotate 90 degrees CW
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(tall).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    assert photos.read_photo(tmp_path / "phone.jpg").shape == (3, 4, 6)
    wide = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)          # 16-bit gray
    Image.fromarray(wide).save(tmp_path / "deep.png")
    got = photos.read_photo(tmp_path / "deep.png")
    assert got.shape == (1, 3, 4) and got.tolist()[0] == np.rint(wide / 257).astype(int).tolist()
    gray_palette = Image.fromarray(pixels((5, 5), 3)).convert("P")
    gray_palette.save(tmp_path / "pal.gif")
    assert photos.read_photo(tmp_path / "pal.gif").shape == (1, 5, 5)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "phone.jpg").read_bytes()[:60])
    with pytest.raises(photos.ImageFolderError, match=r"cut\.jpg.*re-export it or remove it"):
        photos.read_photo(tmp_path / "cut.jpg")


def test_find_images_order_hidden_and_missing(tmp_path):
    for rel in ("b/2.npy", "b/10.npy", "a.npy", "b/c/1.PNG", "b/.x.npy", ".h/1.npy", "b/x.csv",
                "a0/z.npy"):
        p = tmp_path.joinpath(*rel.split("/"))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    (tmp_path / "b" / "named.data").write_bytes(b"")
    found, missing = photos.find_images([str(tmp_path), str(tmp_path / "b" / "named.data"),
                                         str(tmp_path / "gone.png")])
    rel = [os.path.relpath(p, tmp_path).replace(os.sep, "/") for p in found]
    assert rel == ["a.npy", "a0/z.npy", "b/10.npy", "b/2.npy", "b/c/1.PNG", "b/named.data"]
    assert missing == [(str(tmp_path / "gone.png"), "no such file or folder")]


def test_progress_bar_on_a_terminal_only_and_not_with_quiet(tiny_ckpt, tmp_path, monkeypatch,
                                                            capsys):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    path, _ = tiny_ckpt
    for i in range(predict.PROGRESS_MIN):
        np.save(tmp_path / f"{i}.npy", pixels((8, 8), i))
    for quiet, shown in (([], True), (["--quiet"], False)):
        term = Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        predict.main(["--model", path, "--json", "--batch-size", "2", *quiet, str(tmp_path)])
        bar = f"0/{predict.PROGRESS_MIN} [" in term.getvalue()        # tqdm's "n/total [time"
        assert bar == shown, term.getvalue()
        assert len(capsys.readouterr().out.splitlines()) == predict.PROGRESS_MIN
