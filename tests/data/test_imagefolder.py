"""data/imagefolder.py: image files (.npy, PNG, JPEG), folder layouts, splits, resizing,
channels, statistics and errors."""
import json
import os
import re
import sys

import numpy as np
import pytest

from minivit.data.imagefolder import (ImageFolderError, channel_stats, convert_channels,
                                      load_image_folder, read_image, resize_image)

from conftest import digit, make_folder, needs_pil

TINY = dict(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=1, heads=2)


def save_png(path, arr: np.ndarray, mode=None) -> None:
    from PIL import Image
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)


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
    assert ds.preprocessing.class_names == ["a_cat", "b_dog", "c_eel"]                  # sorted
    assert ds.x_train.shape == (12, 1, 8, 8) and ds.x_test.shape == (3, 1, 8, 8)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_test).tolist() == [1, 1, 1]                 # round(5 * 0.2) per class
    assert np.bincount(ds.y_train).tolist() == [4, 4, 4]
    for x, y in zip(np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test])):
        # the label matches the class folder the image came from: the band's row encodes it
        band = {"a_cat": 1, "b_dog": 0, "c_eel": 2}[ds.preprocessing.class_names[y]]
        assert (x[0, 1 + 2 * band, 1:-1] == 255).all()
    pix = ds.x_train.astype(np.float64) / 255
    assert np.allclose(ds.preprocessing.mean, [pix.mean()]) and np.allclose(ds.preprocessing.std, [pix.std()])
    again = load_image_folder(root, test_fraction=0.2, seed=0)
    assert np.array_equal(again.x_test, ds.x_test)                       # seeded split
    splits = {load_image_folder(root, seed=s).x_test.tobytes() for s in range(4)}
    assert len(splits) > 1                                               # the seed matters
    json.dumps(ds.preprocessing.to_dict())                         # checkpoint-safe


def test_folder_given_split_and_channels(tmp_path):
    make_folder(tmp_path / "d" / "train", classes=("x", "y"), n=3)
    make_folder(tmp_path / "d" / "test", classes=("y",), n=2)
    ds = load_image_folder(tmp_path / "d")
    assert ds.preprocessing.class_names == ["x", "y"] and len(ds.x_train) == 6
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
    assert ds3.x_train.shape[1] == 3 and len(ds3.preprocessing.mean) == 3
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


@needs_pil
def test_png_declaring_more_pixels_than_its_bytes_hold(tmp_path):
    """Found by the fuzz run: an IHDR rewritten to 9000 x 9000 made Pillow reserve the whole
    image before finding the data missing; its deflated rows cannot hold that many pixels."""
    import io
    import struct
    import zlib
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    j = data.find(b"IHDR")
    data[j + 4:j + 12] = struct.pack(">II", 9000, 9000)
    data[j + 17:j + 21] = struct.pack(">I", zlib.crc32(bytes(data[j:j + 17])))
    path = tmp_path / "big.png"
    path.write_bytes(bytes(data))
    from minivit.data.photos import read_photo          # predict, embed, evaluate, finetune
    for read in (read_image, read_photo):
        with pytest.raises(ImageFolderError, match=r"declares 9000x9000 pixels, more than its "
                                                   r"\d+ bytes can hold"):
            read(path)


def test_npy_image_with_a_damaged_header(tmp_path):
    """numpy's header parser let tokenize.TokenError through ('EOF in multi-line statement')."""
    head = b"{'descr': '|u1', 'fortran_order': False, 'shape': (8, 8"
    path = tmp_path / "x.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head + bytes(64))
    with pytest.raises(ImageFolderError, match=r"x\.npy has a damaged header"):
        read_image(path)
