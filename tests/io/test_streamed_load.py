"""Streamed loading (minivit/io/layout.py build_model with a source; SafetensorsReader,
GoogleNpzReader): the model load_pretrained builds is the one the all-at-once path builds
(every tensor read, then copied), bit for bit, in every format; the process holds one copy of
the weights, not two (measured in a fresh process); and a damaged file is the same error,
naming the file and the tensor."""
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from minivit import Preprocessing, ViT, ViTConfig
from minivit.io import (GoogleNpzError, SafetensorsError, describe_pretrained, load_google_npz,
                        load_pretrained, read_google_npz, read_safetensors, save_google_npz,
                        save_pretrained, write_safetensors)
from minivit.io.google import GoogleNpzReader
from minivit.io.layout import from_layout
from minivit.io.pretrained import _layout, find_source
from minivit.io.safetensors_file import SafetensorsReader

from conftest import has, randomize_params

needs_st = pytest.mark.skipif(not has("safetensors"),
                              reason="writing needs safetensors (pip install -e .[hub])")
BASE = dict(image_size=12, patch_size=4, in_channels=3, num_classes=3, dim=12, depth=2, heads=3,
            mlp_ratio=2.0)
PRE = Preprocessing(mean=[0.5] * 3, std=[0.5] * 3, image_size=12, channels=3,
                    class_names=["a", "b", "c"])


def model(seed=0, **cfg):
    m = ViT(ViTConfig(**{**BASE, **cfg}), preprocessing=PRE)
    randomize_params(m, seed)
    return m


def all_at_once(path, **overrides):
    """The loader before streaming, as the reference: every tensor read (f16/bf16 widened), the
    layout found from them, a randomly initialized ViT, every transformed tensor copied in."""
    src = find_source(path)
    image_size = overrides.pop("image_size", None)
    if src.format == "google":
        arrays = read_google_npz(src.path)
    else:
        arrays = {}
        for w in src.weights:
            arrays.update(read_safetensors(w)[0])
    lay = _layout(src, arrays, overrides)
    m = ViT(lay.config, seed=0, preprocessing=lay.preprocessing)
    for k, v in from_layout(lay.arrays, lay.table, lay.config).items():
        m.params[k] = v
    size = image_size or lay.image_size
    if size is not None and size != lay.config.image_size:
        m.set_image_size(size, **lay.resample)
    return m


def assert_same(a: ViT, b: ViT):
    assert a.config == b.config and a.preprocessing == b.preprocessing
    assert list(a.params) == list(b.params)
    for k in a.params:
        assert a.params[k].dtype == b.params[k].dtype, k
        assert np.array_equal(a.params[k], b.params[k]), k


def half_file(src, dst, code: str):
    """The safetensors file src again with every tensor as F16 or BF16, written by hand."""
    arrays, _ = read_safetensors(src)
    head, chunks, at = {}, [], 0
    for k, v in arrays.items():
        v = v.astype(np.float32)
        raw = (v.astype("<f2") if code == "F16" else (v.view(np.uint32) >> 16).astype("<u2"))
        head[k] = {"dtype": code, "shape": list(v.shape), "data_offsets": [at, at + raw.nbytes]}
        chunks.append(raw.tobytes())
        at += raw.nbytes
    text = json.dumps(head).encode()
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints of tiny models in every format the loader streams."""
    if not has("safetensors"):
        pytest.skip("writing needs safetensors (pip install -e .[hub])")
    d = tmp_path_factory.mktemp("streamed")
    hf = dict(gelu="erf", eps=1e-12)
    save_pretrained(model(0, dtype="float64", **hf), d / "hf", "hf")
    save_pretrained(model(1, distilled=True, **hf), d / "deit", "hf")
    save_pretrained(model(2, num_classes=0, layer_scale=1.0, num_registers=1, gelu="erf",
                          eps=1e-6), d / "dino", "hf")
    save_pretrained(model(3, layer_scale=1e-5, pos_embed_cls=False, num_registers=2,
                          gelu="erf", eps=1e-6), d / "timm", "timm")
    save_google_npz(model(4, gelu="tanh", eps=1e-6), d / "g.npz")
    save_google_npz(model(5, gelu="tanh", eps=1e-6, representation_size=6), d / "rep.npz")
    with zipfile.ZipFile(d / "g.npz") as z, zipfile.ZipFile(d / "opt.npz", "w") as out:
        for n in z.namelist():                            # a Flax optimizer's 'opt/target/' tree
            out.writestr("opt/target/" + n, z.read(n))
    shutil.copy(d / "g.minivit.json", d / "opt.minivit.json")
    (d / "bare").mkdir()
    shutil.copy(d / "hf" / "model.safetensors", d / "bare" / "w.safetensors")
    shutil.copytree(d / "hf", d / "sharded")
    arrays, _ = read_safetensors(d / "sharded" / "model.safetensors")
    keys = list(arrays)
    cut = next(i for i, k in enumerate(keys) if k.endswith("attention.key.weight"))
    parts = {"model-1.safetensors": keys[:cut], "model-2.safetensors": keys[cut:]}
    for name, ks in parts.items():                        # query in one shard, key in the next
        write_safetensors({k: arrays[k] for k in ks}, d / "sharded" / name)
    (d / "sharded" / "model.safetensors").unlink()
    (d / "sharded" / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: n for n, ks in parts.items() for k in ks}}))
    for code in ("F16", "BF16"):
        (d / code).mkdir()
        shutil.copy(d / "timm" / "config.json", d / code / "config.json")
        half_file(d / "timm" / "model.safetensors", d / code / "model.safetensors", code)
    return d


CASES = [("hf", {}), ("hf", {"dtype": "float64"}), ("hf", {"image_size": 16}),
         ("deit", {}), ("dino", {"image_size": 20}), ("timm", {}),
         ("timm", {"image_size": 8, "dtype": "float64"}), ("F16", {}),
         ("BF16", {"dtype": "float64"}), ("g.npz", {"dtype": "float64"}),
         ("g.npz", {"image_size": 16}), ("rep.npz", {}), ("opt.npz", {}),
         ("bare/w.safetensors", {"heads": 3}), ("sharded", {"dtype": "float64"})]


@pytest.mark.parametrize("name, overrides", CASES,
                         ids=[f"{n}-{'-'.join(map(str, o.values())) or 'plain'}"
                              for n, o in CASES])
def test_streamed_equals_all_at_once(files, name, overrides):
    streamed = load_pretrained(files / name, **overrides)
    assert_same(streamed, all_at_once(files / name, **overrides))


@needs_st
@pytest.mark.parametrize("fmt, kw", [("hf", dict(gelu="erf", eps=1e-12)),
                                     ("timm", dict(gelu="erf", eps=1e-6)),
                                     ("google", dict(gelu="tanh", eps=1e-6))])
def test_round_trip_gives_the_saved_params(tmp_path, fmt, kw):
    m = model(7, dtype="float64", **kw)
    path = tmp_path / ("g.npz" if fmt == "google" else fmt)
    save_pretrained(m, path, fmt)
    back = load_pretrained(path, dtype="float64")
    assert list(back.params) == list(m.params)
    assert all(np.array_equal(back.params[k], v) for k, v in m.params.items())


def test_load_google_npz_resamples_as_asked(files):
    g = load_google_npz(files / "rep.npz", image_size=16, resize_method="bicubic")
    ref = all_at_once(files / "rep.npz")
    ref.set_image_size(16, method="bicubic", align_corners=True)
    assert_same(g, ref)


def test_without_mmap_the_tensors_are_read(files, monkeypatch):
    """A file system that cannot map files: each tensor is read with a plain read."""
    def refuse(*args, **kwargs):
        raise OSError("mmap is not supported here")
    want = load_pretrained(files / "BF16")
    monkeypatch.setattr(mmap, "mmap", refuse)
    assert_same(load_pretrained(files / "BF16"), want)
    assert_same(load_pretrained(files / "sharded"), all_at_once(files / "sharded"))


def test_a_view_alive_at_close_is_no_error(files):
    """close() with an array still over the map leaves the map to that array."""
    with SafetensorsReader(files / "hf" / "model.safetensors") as f:
        w = f.tensor("classifier.weight")
        f.release()                                       # pages dropped: read again on use
    assert np.array_equal(w, read_safetensors(files / "hf" / "model.safetensors")[0]
                          ["classifier.weight"])


def test_describe_reads_headers_only(files):
    d = describe_pretrained(files / "g.npz")
    assert d["dtypes"] == {"float32": len(read_google_npz(files / "g.npz"))}
    assert describe_pretrained(files / "BF16")["dtypes"] == {
        "BF16": len(read_safetensors(files / "BF16" / "model.safetensors")[0])}


# ---- one copy of the weights --------------------------------------------------------------------
CHILD = """
import sys
from minivit.io import load_pretrained

def status(key):                                          # kB, from /proc/self/status
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

{define}
load(sys.argv[2])                                         # imports and first uses: not counted
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                      # the peak (VmHWM) starts again here
except OSError:
    pass
before = status("VmRSS")
model = load(sys.argv[1])
print((status("VmHWM") - before) * 1024)
"""
STREAMED = "load = load_pretrained"
OLD = """
from minivit import ViT
from minivit.io import read_google_npz, read_safetensors
from minivit.io.layout import from_layout
from minivit.io.pretrained import _layout, find_source

def load(path):                                           # every tensor read, then copied
    src = find_source(path)
    arrays = (read_google_npz(path) if src.format == "google"
              else read_safetensors(src.weights[0])[0])
    lay = _layout(src, arrays, {})
    m = ViT(lay.config, preprocessing=lay.preprocessing)
    for k, v in from_layout(lay.arrays, lay.table, lay.config).items():
        m.params[k] = v
    return m
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A ~40 MB float32 model as hf and Google files, and a tiny one to warm up with."""
    if not has("safetensors"):
        pytest.skip("writing needs safetensors (pip install -e .[hub])")
    d = tmp_path_factory.mktemp("big")
    cfg = ViTConfig(image_size=32, patch_size=16, in_channels=3, num_classes=10, dim=384,
                    depth=8, heads=6, gelu="tanh", eps=1e-6)
    m = ViT(cfg, init=False)
    m.params.flat[...] = np.random.default_rng(0).standard_normal(m.params.flat.size,
                                                                 dtype=np.float32)
    save_pretrained(m, d / "big", "hf")
    save_google_npz(m, d / "big.npz")
    tiny = ViT(ViTConfig(image_size=8, patch_size=4, in_channels=3, num_classes=2, dim=8,
                         depth=1, heads=2, gelu="tanh", eps=1e-6))
    save_pretrained(tiny, d / "tiny", "hf")
    save_google_npz(tiny, d / "tiny.npz")
    return d, m.params.flat.nbytes


def peak_growth(define: str, path, warm) -> int:
    """Bytes the peak resident set grows by while a fresh process loads path."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    out = subprocess.run([sys.executable, "-c", CHILD.format(define=define), str(path),
                          str(warm)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/status"),
                    reason="reads the peak resident set from /proc/self/status (Linux)")
def test_loading_holds_one_copy_of_the_weights(big):
    """The peak resident set grows by the flat vector and a tensor or two, not by the file's
    arrays as well. The all-at-once loader, measured the same way, grows by two copies: the
    measurement sees a second copy when there is one. (A subprocess inherits ru_maxrss from
    the large process that starts it, so the peak is read as VmHWM.)"""
    d, nbytes = big
    for name, warm in (("big", "tiny"), ("big.npz", "tiny.npz")):
        growth = peak_growth(STREAMED, d / name, d / warm)
        assert growth < 1.4 * nbytes, f"{name}: grew {growth / nbytes:.2f}x the weights"
    growth = peak_growth(OLD, d / "big", d / "tiny")
    assert growth > 1.8 * nbytes, f"the all-at-once loader grew only {growth / nbytes:.2f}x"


# ---- damaged files ------------------------------------------------------------------------------
def test_truncated_and_out_of_range_files_name_the_file_and_tensor(files, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(files / "hf", folder)
    weights = folder / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-10])
    with pytest.raises(SafetensorsError, match=r"tensor '.*' has bytes \[\d+, \d+\) outside "
                                               r"the file's \d+ bytes of data") as e:
        load_pretrained(folder)
    assert str(weights) in str(e.value)
    n = struct.unpack("<Q", whole[:8])[0]
    head = json.loads(whole[8:8 + n])
    begin, end = head["classifier.bias"]["data_offsets"]
    head["classifier.bias"]["data_offsets"] = [begin + 10 ** 6, end + 10 ** 6]
    text = json.dumps(head).encode()
    weights.write_bytes(struct.pack("<Q", len(text)) + text + whole[8 + n:])
    with pytest.raises(SafetensorsError, match=r"tensor 'classifier.bias' has bytes .* outside"):
        load_pretrained(folder)
    weights.write_bytes(whole[:20])
    with pytest.raises(SafetensorsError, match="truncated or not a safetensors file"):
        load_pretrained(folder)


def test_a_file_that_shrinks_after_its_header_is_read(files, tmp_path, monkeypatch):
    from minivit.io import safetensors_file
    path = tmp_path / "w.safetensors"
    shutil.copy(files / "hf" / "model.safetensors", path)
    real = safetensors_file.read_safetensors_header

    def then_cut(p):
        out = real(p)
        path.write_bytes(path.read_bytes()[:-4])
        return out
    monkeypatch.setattr(safetensors_file, "read_safetensors_header", then_cut)
    with pytest.raises(SafetensorsError, match="changed while it was read"):
        SafetensorsReader(path)


def test_nan_names_the_file_and_tensor(files, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(files / "hf", folder)
    arrays, _ = read_safetensors(folder / "model.safetensors")
    arrays["classifier.bias"][1] = np.nan
    write_safetensors(arrays, folder / "model.safetensors")
    with pytest.raises(SafetensorsError, match=r"model.safetensors: NaN or inf in classifier.bias "
                                               r"\(1 of 3 values\).*allow_nonfinite=True"):
        load_pretrained(folder)
    assert np.isnan(load_pretrained(folder, allow_nonfinite=True).params["head.b"][1])
    g = read_google_npz(files / "g.npz")
    g["head/bias"] = g["head/bias"].copy()
    g["head/bias"][0] = np.inf
    np.savez(tmp_path / "g.npz", **g)
    with pytest.raises(GoogleNpzError, match=r"g.npz: NaN or inf in head/bias \(1 of 3 values\)"):
        load_pretrained(tmp_path / "g.npz")
    with pytest.raises(GoogleNpzError, match="NaN or inf in head/bias"):
        load_google_npz(tmp_path / "g.npz")
    assert np.isinf(load_google_npz(tmp_path / "g.npz", allow_nonfinite=True).params["head.b"][0])


def test_damaged_npz_members(files, tmp_path):
    data = (files / "g.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(GoogleNpzError, match="cut.npz: it is truncated or not a vit_jax .npz"):
        load_pretrained(tmp_path / "cut.npz")
    with zipfile.ZipFile(files / "g.npz") as z:
        info = z.getinfo("head/kernel.npy")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    flipped = bytearray(data)
    flipped[start + info.compress_size - 1] ^= 0xFF      # the last data byte: the CRC fails
    (tmp_path / "crc.npz").write_bytes(bytes(flipped))
    for load in (load_google_npz, load_pretrained):
        with pytest.raises(GoogleNpzError, match=r"crc.npz: array 'head/kernel' is corrupt "
                                                 r"\(BadZipFile: Bad CRC-32"):
            load(tmp_path / "crc.npz")
    with GoogleNpzReader(files / "g.npz") as npz:         # opened: shapes, no data read yet
        assert npz.stand_ins["head/kernel"].shape == (12, 3)
        assert np.array_equal(npz.tensor("head/kernel"), read_google_npz(files / "g.npz")
                              ["head/kernel"])
