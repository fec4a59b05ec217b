"""safetensors reading (minivit/io/safetensors_file.py): every header check with an error naming
the file, the tensor and the fix; pickle files refused before a byte is read; f16/bf16 widened;
the missing package named when writing (reading needs none)."""
import json
import struct

import numpy as np
import pytest

from minivit.io.safetensors_file import (MissingExtra, SafetensorsError, bf16_to_float32,
                                         read_safetensors, read_safetensors_header,
                                         refuse_pickle, write_safetensors)

from conftest import has

needs_st = pytest.mark.skipif(not has("safetensors"),
                              reason="needs safetensors (pip install -e .[hub])")


def st_file(path, tensors: dict, data: bytes, meta=None, raw_header: bytes = None):
    """A safetensors file made by hand: 8-byte length, JSON header, data."""
    header = dict(tensors)
    if meta is not None:
        header["__metadata__"] = meta
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


def good(tmp_path, name="m.safetensors"):
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([1.5, -2.0], dtype="<f8")
    t = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
         "b": {"dtype": "F64", "shape": [2], "data_offsets": [24, 40]}}
    return st_file(tmp_path / name, t, a.tobytes() + b.tobytes(), {"format": "pt"}), a, b


@needs_st
def test_reads_what_it_writes_and_hand_made_files(tmp_path):
    path, a, b = good(tmp_path)
    arrays, meta = read_safetensors(path)
    assert np.array_equal(arrays["a"], a) and np.array_equal(arrays["b"], b)
    assert meta == {"format": "pt"}
    write_safetensors({"w": np.ones((2, 2), np.float32)}, tmp_path / "w.safetensors")
    arrays, meta = read_safetensors(tmp_path / "w.safetensors")
    assert meta["format"] == "pt" and arrays["w"].dtype == np.float32


def test_f16_and_bf16_become_float32(tmp_path):     # a hand-made file: no package needed
    x = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    bits = (x.view(np.uint32) >> 16).astype("<u2")        # bf16: the top 16 bits
    half = x.astype("<f2")
    t = {"h": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
         "bf": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]}}
    arrays, _ = read_safetensors(st_file(tmp_path / "m.safetensors", t,
                                         half.tobytes() + bits.tobytes()))
    assert arrays["h"].dtype == arrays["bf"].dtype == np.float32
    np.testing.assert_array_equal(arrays["h"], half.astype(np.float32))
    np.testing.assert_array_equal(arrays["bf"].ravel(), bf16_to_float32(bits))
    np.testing.assert_allclose(arrays["bf"].ravel(), x, rtol=2 ** -7)
    assert bf16_to_float32(np.array([0x3F80], np.uint16))[0] == 1.0


@pytest.mark.parametrize("edit, match", [
    (lambda t: t["a"].update(dtype="F8_E4M3"), r"tensor 'a' has the unknown dtype 'F8_E4M3'"),
    (lambda t: t["a"].update(shape=[2, 4]), r"'a' declares shape \(2, 4\)"),
    (lambda t: t["b"].update(data_offsets=[24, 48]), r"tensor 'b' has bytes \[24, 48\) outside"),
    (lambda t: t["b"].update(data_offsets=[16, 32], shape=[2]), r"'a' and 'b' share bytes"),
    (lambda t: t["a"].update(shape=[2, -3]), r"'a' declares the invalid shape"),
    (lambda t: t["a"].update(data_offsets=[0]), r"tensor 'a' has invalid data_offsets"),
    (lambda t: t["a"].pop("dtype"), r"tensor 'a' has no dtype/shape/data_offsets"),
])
def test_bad_headers_name_the_tensor(tmp_path, edit, match):
    t = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
         "b": {"dtype": "F64", "shape": [2], "data_offsets": [24, 40]}}
    edit(t)
    path = st_file(tmp_path / "bad.safetensors", t, bytes(40))
    with pytest.raises(SafetensorsError, match=match) as e:
        read_safetensors_header(path)
    assert str(path) in str(e.value)


def test_truncated_and_garbage_files(tmp_path):
    path, _, _ = good(tmp_path)
    whole = path.read_bytes()
    for cut, match in ((4, "too short"), (20, "header claims"), (len(whole) - 3, "outside")):
        (tmp_path / "cut.safetensors").write_bytes(whole[:cut])
        with pytest.raises(SafetensorsError, match=match):
            read_safetensors_header(tmp_path / "cut.safetensors")
    st_file(tmp_path / "j.safetensors", {}, b"", raw_header=b"{not json")
    with pytest.raises(SafetensorsError, match="not JSON"):
        read_safetensors_header(tmp_path / "j.safetensors")
    st_file(tmp_path / "l.safetensors", {}, b"", raw_header=b"[1, 2]")
    with pytest.raises(SafetensorsError, match="not an object"):
        read_safetensors_header(tmp_path / "l.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(SafetensorsError, match="empty"):
        read_safetensors_header(tmp_path / "empty.safetensors")
    with pytest.raises(FileNotFoundError):
        read_safetensors_header(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pth", "weights.pt", "last.ckpt"])
def test_pickle_files_are_refused_before_reading(tmp_path, name):
    """The file does not even exist: the refusal comes from the name, before any open()."""
    with pytest.raises(SafetensorsError, match="pickle.*safetensors.*save_pretrained"):
        refuse_pickle(tmp_path / name)
    with pytest.raises(SafetensorsError, match="safe_serialization=True"):
        read_safetensors_header(tmp_path / name)


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    """Writing goes through the safetensors package and names it when it is missing; reading
    does not need it (SafetensorsReader maps the file itself)."""
    import builtins
    real = builtins.__import__

    def no_safetensors(name, *args, **kwargs):
        if name.startswith("safetensors"):
            raise ImportError("no module named safetensors")
        return real(name, *args, **kwargs)

    path, a, b = good(tmp_path)
    monkeypatch.setattr(builtins, "__import__", no_safetensors)
    arrays, meta = read_safetensors(path)
    assert np.array_equal(arrays["a"], a) and np.array_equal(arrays["b"], b)
    with pytest.raises(MissingExtra, match=r"pip install -e \"\.\[hub\]\""):
        write_safetensors({"w": np.ones(2, np.float32)}, tmp_path / "w.safetensors")
    with pytest.raises(RuntimeError, match="safetensors"):   # one error line in the commands
        write_safetensors({"w": np.ones(2, np.float32)}, tmp_path / "w.safetensors")


@pytest.mark.parametrize("edit, match", [   # found by the fuzz run (tests/fuzz)
    (lambda t: t["a"].update(dtype=["F32"]), r"tensor 'a' has the unknown dtype \['F32'\]"),
    (lambda t: t["a"].update(dtype={"F32": 1}), r"tensor 'a' has the unknown dtype"),
    (lambda t: t.update(__metadata__={"format": ["pt"]}), r"__metadata__ is not an object of str"),
    (lambda t: t.update(__metadata__=7), r"__metadata__ is not an object"),
])
def test_header_values_of_the_wrong_json_type(tmp_path, edit, match):
    """A dtype that is a list or an object raised TypeError (unhashable) in the check itself."""
    t = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
    edit(t)
    path = st_file(tmp_path / "bad.safetensors", t, bytes(24))
    with pytest.raises(SafetensorsError, match=match) as e:
        read_safetensors_header(path)
    assert str(path) in str(e.value)


def test_deeply_nested_header_is_a_file_error(tmp_path):
    """json.loads raised RecursionError on a header nested thousands deep."""
    path = st_file(tmp_path / "deep.safetensors", {}, b"", raw_header=b"[" * 5000 + b"]" * 5000)
    with pytest.raises(SafetensorsError, match="not JSON .*RecursionError|not JSON"):
        read_safetensors_header(path)


@pytest.mark.parametrize("shape", [[0] * 100, [2, 3, 2 ** 40, 2 ** 40, 0]])
def test_shapes_no_numpy_array_can_have(tmp_path, shape):
    """A tensor of no bytes whose shape numpy cannot make (100 dimensions; sizes whose product,
    a 0 aside, overflows an index) passed the size check and broke numpy."""
    t = {"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}
    path = st_file(tmp_path / "dims.safetensors", t, b"")
    with pytest.raises(SafetensorsError, match=r"'a' declares shape .* which no NumPy array"):
        read_safetensors_header(path)
