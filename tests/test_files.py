"""Hostile and broken files against every reader, and failing disks against every writer.

Every reader (minivit checkpoints, Google .npz, .npy and PNG images, MNIST IDX files) meets one
standard (minivit/files.py): each bad-file case raises the reader's FileFormatError subclass,
whose message names the file, the problem and the fix, without allocating what a hostile header
declares and without unpickling anything. Every writer turns an OSError into one `error:` line
naming the path and leaves the old file as it was.
"""
import errno
import gzip
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from minivit import ViT, ViTConfig, files
from minivit.cli import run
from minivit.data.download import DataError
from minivit.data.imagefolder import ImageFolderError, read_image
from minivit.data.mnist import read_idx
from minivit.files import FileFormatError, WriteError, atomic_write, clean_stale_temps
from minivit.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivit.io.google import GoogleNpzError, load_google_npz, save_google_npz
from minivit.optim import AdamW

from conftest import ROOT, has, idx_bytes

CFG = dict(image_size=8, patch_size=4, in_channels=1, dim=8, depth=1, heads=2, num_classes=3)
ABSURD = (10 ** 12,)                                       # 4 TB of float32
MAX_PEAK = 20 << 20                                        # bytes a refusal may allocate


# ---- writing bad files --------------------------------------------------------------------------
def npy_bytes(arr=None, header=None, version=(1, 0), data=None) -> bytes:
    """A .npy stream: arr's header (or a hand-made header dict) and data, at a chosen version."""
    buf = io.BytesIO()
    if arr is not None and arr.dtype.hasobject:
        np.save(buf, arr, allow_pickle=True)
        return buf.getvalue()
    header = header or np.lib.format.header_data_from_array_1_0(arr)
    fmt = np.lib.format.write_array_header_2_0 if version == (2, 0) else \
        np.lib.format.write_array_header_1_0
    fmt(buf, header)
    out = buf.getvalue()
    if version not in ((1, 0), (2, 0)):
        out = out[:6] + bytes(version) + out[8:]
    return out + (arr.tobytes() if data is None else data)


def write_npz(path, arrays: dict, raw: dict = None) -> str:
    """An .npz (stored, as np.savez writes it) of arrays, with some members given as raw bytes."""
    raw = raw or {}
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in arrays.items():
            zf.writestr(k + ".npy", raw[k] if k in raw else npy_bytes(np.asarray(v)))
    return str(path)


def flip_member_byte(path, member: str) -> None:
    """Flip the last data byte of a stored zip member: its CRC-32 no longer matches."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member + ".npy")
    data = bytearray(open(path, "rb").read())
    n, m = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + n + m + info.compress_size - 1] ^= 0xFF
    open(path, "wb").write(bytes(data))


class Evil:
    """Unpickling this sets MINIVIT_PWNED: proof that nothing was unpickled when it stays unset."""

    def __reduce__(self):
        return exec, ("import os; os.environ['MINIVIT_PWNED'] = '1'",)


def png_bytes(w=8, h=8, declare=None) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray((np.arange(w * h).reshape(h, w) % 256).astype(np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    if declare:                                           # rewrite IHDR's size, with a valid CRC
        j = data.find(b"IHDR")
        data[j + 4:j + 12] = struct.pack(">II", *declare)
        data[j + 17:j + 21] = struct.pack(">I", zlib.crc32(bytes(data[j:j + 17])))
    return bytes(data)


def garbage(n=2000) -> bytes:
    return b"\x8a" + np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


# ---- the readers and their bad files ------------------------------------------------------------
def good_checkpoint() -> dict:
    """The arrays of a real checkpoint (params, AdamW state, meta)."""
    m = ViT(ViTConfig(**CFG), seed=0)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(os.path.join(d, "c.npz"), m, AdamW(m.params, lr=1e-3))
        with np.load(os.path.join(d, "c.npz"), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}


def good_google() -> dict:
    from minivit.io.google import to_google
    m = ViT(ViTConfig(**{**CFG, "eps": 1e-6, "gelu": "tanh"}), seed=0)
    return to_google({k: np.asarray(v) for k, v in m.params.items()}, m.config)


def npz_cases(good: dict, target: str, reader: str) -> dict:
    """case -> (write(path), message regex) for an .npz reader; target: a float parameter."""
    t = good[target]

    def replace(member_bytes):
        return lambda p: write_npz(p, good, {target: member_bytes})

    def edit(value):
        return lambda p: write_npz(p, {**good, target: value})

    def truncated(p):
        write_npz(p, good)
        data = open(p, "rb").read()
        open(p, "wb").write(data[:len(data) // 2])

    def crc(p):
        write_npz(p, good)
        flip_member_byte(p, target)

    def version(p):
        meta = json.loads(good["meta"].tobytes())
        meta["format_version"] = 99
        write_npz(p, {**good, "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)})

    name = target[len("params/"):] if target.startswith("params/") else target
    cases = {
        "truncated": (truncated, "truncated or not"),
        "random bytes": (lambda p: open(p, "wb").write(garbage()), "truncated or not .*PK"),
        "corrupt member (CRC)": (crc, f"{re.escape(target)}' is corrupt .*CRC"),
        "declares more data": (replace(npy_bytes(header={"descr": "<f4", "fortran_order": False,
                                                         "shape": (1000,)}, data=t.tobytes())),
                               r"shape \(1000,\) of float32 .*more data than the file holds"),
        "absurd shape": (replace(npy_bytes(header={"descr": "<f4", "fortran_order": False,
                                                   "shape": ABSURD}, data=t.tobytes())),
                         r"shape \(1000000000000,\) of float32 \(4 TB\)"),
        "object (pickled) array": (edit(np.array([Evil()], dtype=object)),
                                   r"object \(pickled\) arrays.*never loads"),
        "unsupported dtype": (edit(np.array(["abc"])), "unsupported dtype <U3"),
        "other .npy version": (replace(npy_bytes(t, version=(9, 0))), "format version 9.0"),
        "NaN": (edit(np.where(np.arange(t.size).reshape(t.shape) == 0, np.nan, t).astype(t.dtype)),
                rf"NaN or inf in {re.escape(name)} \(1 of {t.size} values\).*allow_nonfinite=True"),
        "inf": (edit(np.full_like(t, np.inf)),
                rf"NaN or inf in {re.escape(name)} \({t.size} of {t.size} values\).*"
                rf"allow_nonfinite=True"),
    }
    if reader == "checkpoint":
        cases["other format version"] = (version, "format version 99, this minivit reads")
    return cases


def npy_image_cases() -> dict:
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    good = npy_bytes(img)

    def put(data):
        return lambda p: open(p, "wb").write(data)
    hdr = {"descr": "|u1", "fortran_order": False}
    return {
        "truncated": (put(good[:-5]), r"\(64 bytes\), more data than the file holds"),
        "random bytes": (put(garbage()), "is not a NumPy .npy array"),
        "declares more data": (put(npy_bytes(header={**hdr, "shape": (100, 100)},
                                             data=img.tobytes())),
                               r"shape \(100, 100\) of uint8 .*more data than the file holds"),
        "absurd shape": (put(npy_bytes(header={**hdr, "shape": ABSURD}, data=img.tobytes())),
                         r"shape \(1000000000000,\) of uint8"),
        "object (pickled) array": (put(npy_bytes(np.array([Evil()], dtype=object))),
                                   r"object \(pickled\) arrays.*never loads"),
        "unsupported dtype": (put(npy_bytes(np.zeros((4, 4), np.complex64))),
                              "unsupported dtype complex64"),
        "other .npy version": (put(npy_bytes(img, version=(9, 0))), "format version 9.0"),
        "NaN": (put(npy_bytes(np.full((4, 4), np.nan))), "holds NaN or inf"),
        "inf": (put(npy_bytes(np.full((4, 4), np.inf))), "holds NaN or inf"),
    }


def png_cases() -> dict:
    def put(make):
        return lambda p: open(p, "wb").write(make())

    def corrupt():
        data = bytearray(png_bytes(16, 16))
        i = data.find(b"IDAT")
        data[i + 4 + 5] ^= 0x55                            # inside the compressed pixels
        return bytes(data)
    return {
        "truncated": (put(lambda: png_bytes()[:len(png_bytes()) // 2]), "cannot read image"),
        "random bytes": (put(garbage), "cannot read image .*not a PNG/JPEG"),
        "corrupt member (CRC)": (put(corrupt), "cannot read image"),
        "declares more data": (put(lambda: png_bytes(declare=(64, 64))), "cannot read image"),
        "absurd shape": (put(lambda: png_bytes(declare=(10000, 10000))),
                         "declares 10000x10000 pixels, more than"),
    }


def idx_cases() -> dict:
    good = idx_bytes(np.zeros((2, 3), np.uint8))

    def put(data):
        return lambda p: open(p, "wb").write(data)

    def bad_crc():
        gz = bytearray(gzip.compress(good))
        gz[-8] ^= 0xFF                                     # the gzip trailer's CRC-32
        return bytes(gz)
    nan = np.array([1.0, np.nan], np.float32)
    return {
        "truncated": (put(good[:-1]), "IDX payload truncated"),
        "random bytes": (put(garbage()), "not an IDX file"),
        "corrupt member (CRC)": (put(bad_crc()), "broken gzip data .*CRC"),
        "declares more data": (put(good[:4] + struct.pack(">II", 1000, 3) + good[12:]),
                               r"truncated: 6 bytes .* expected 3000 for shape \(1000, 3\)"),
        "absurd shape": (put(good[:3] + b"\x03" + struct.pack(">III", *(2 ** 32 - 1,) * 3)),
                         r"expected \d+ for shape \(4294967295, 4294967295, 4294967295\)"),
        "unsupported dtype": (put(good[:2] + b"\x07" + good[3:]), "unknown IDX dtype code 0x07"),
        "NaN": (put(idx_bytes(nan)), "holds NaN or inf"),
        "inf": (put(idx_bytes(np.array([np.inf], np.float32))), "holds NaN or inf"),
    }


def load_ckpt(p):
    return load_checkpoint(p)


READERS = {   # name -> (reader, its error, file suffix, {case: (write, regex)})
    "checkpoint": (load_ckpt, CheckpointError, ".npz",
                   lambda: npz_cases(good_checkpoint(), "params/head.b", "checkpoint")),
    "google npz": (load_google_npz, GoogleNpzError, ".npz",
                   lambda: npz_cases(good_google(), "head/bias", "google")),
    "npy image": (read_image, ImageFolderError, ".npy", npy_image_cases),
    "png image": (read_image, ImageFolderError, ".png", png_cases),
    "mnist idx": (read_idx, DataError, "-idx2-ubyte", idx_cases),
}
COMMON = {
    "missing": (None, "no such file; check the path"),
    "a directory": (os.mkdir, "is a folder, not"),
    "empty": (lambda p: open(p, "wb").close(), r"is empty \(0 bytes\)"),
}
CASES = ["missing", "a directory", "empty", "truncated", "random bytes", "corrupt member (CRC)",
         "declares more data", "absurd shape", "object (pickled) array", "unsupported dtype",
         "other .npy version", "other format version", "NaN", "inf"]
_cache = {}


def cases_of(reader: str) -> dict:
    if reader not in _cache:
        _cache[reader] = {**COMMON, **READERS[reader][3]()}
    return _cache[reader]


def matrix():
    """Every (reader, case) pair that applies (an IDX file cannot hold a pickle, ...)."""
    out = []
    for reader in READERS:
        needs_pil = reader == "png image" and not has("PIL")
        names = set(COMMON) | ({"truncated", "random bytes", "corrupt member (CRC)",
                               "declares more data", "absurd shape"} if needs_pil else
                              set(cases_of(reader)))
        for case in CASES:
            if case in names:
                marks = [pytest.mark.skip(reason="needs PIL")] if needs_pil else []
                out.append(pytest.param(reader, case, id=f"{reader}-{case}", marks=marks))
    return out


@pytest.mark.parametrize("reader,case", matrix())
def test_bad_file(tmp_path, monkeypatch, reader, case):
    load, error, suffix, _ = READERS[reader]
    make, pattern = cases_of(reader)[case]
    path = str(tmp_path / ("bad" + suffix))
    if make is not None:
        make(path)
    monkeypatch.delenv("MINIVIT_PWNED", raising=False)
    tracemalloc.start()
    try:
        with pytest.raises(error) as e:
            load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(e.value)
    assert isinstance(e.value, FileFormatError) and isinstance(e.value, ValueError)
    assert path in msg, msg                                # names the file
    assert re.search(pattern, msg), f"{pattern!r} not in {msg!r}"
    assert "; " in msg, msg                                # the problem; then the fix
    assert peak < MAX_PEAK, f"{peak} bytes allocated before refusing"
    assert "MINIVIT_PWNED" not in os.environ               # nothing was unpickled
    if case == "missing":
        assert isinstance(e.value, FileNotFoundError)      # `except FileNotFoundError` still works


def test_nonfinite_opt_out_loads_for_inspection(tmp_path):
    good = good_checkpoint()
    nan = np.full_like(good["params/head.b"], np.nan)
    path = write_npz(tmp_path / "nan.npz", {**good, "params/head.b": nan})
    with pytest.raises(CheckpointError, match=r"NaN or inf in head.b \(3 of 3 values\)"):
        load_checkpoint(path)
    model = load_checkpoint(path, allow_nonfinite=True)["model"]
    assert np.isnan(model.params["head.b"]).all()
    g = good_google()
    path = write_npz(tmp_path / "g.npz",
                     {**g, "head/kernel": np.full_like(g["head/kernel"], np.inf)})
    with pytest.raises(GoogleNpzError, match=r"NaN or inf in head/kernel \(24 of 24 values\)"):
        load_google_npz(path)
    assert np.isinf(load_google_npz(path, allow_nonfinite=True).params["head.w"]).all()


def test_good_files_still_load_exactly(tmp_path):
    """The checked reader gives what np.load gives: values, dtypes, Fortran order, 0-d arrays."""
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.asfortranarray(
        np.arange(12.0).reshape(3, 4)), "c": np.array(7, np.int64), "d": np.zeros((0, 5), ">f8"),
        "e": np.array([True, False])}
    np.savez(tmp_path / "s.npz", **arrays)
    np.savez_compressed(tmp_path / "z.npz", **arrays)
    for name in ("s.npz", "z.npz"):
        got = files.read_npz(tmp_path / name)
        assert got.keys() == arrays.keys()
        for k, v in arrays.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and (got[k] == v).all(), k
            assert got[k].flags.writeable
        assert got["b"].flags.f_contiguous


def test_google_errors_name_the_file(tmp_path):
    path = tmp_path / "resnet.npz"
    np.savez(path, **{"conv/kernel": np.zeros((3, 3, 3, 8), np.float32)})
    with pytest.raises(GoogleNpzError, match=re.escape(str(path)) + ": not a vit_jax ViT"):
        load_google_npz(path)
    with pytest.raises(GoogleNpzError, match=re.escape(str(tmp_path)) + " is a folder"):
        load_google_npz(tmp_path)
    with pytest.raises(ValueError, match="unknown ViTConfig fields") as e:   # the caller's error
        load_google_npz(path, colour="red")
    assert not isinstance(e.value, GoogleNpzError)


# ---- the commands on hostile files --------------------------------------------------------------
def hostile_checkpoint(tmp_path, target_value=None) -> str:
    good = good_checkpoint()
    if target_value is None:                              # a 4 TB header over 12 bytes
        raw = {"params/head.b": npy_bytes(header={"descr": "<f4", "fortran_order": False,
                                                   "shape": ABSURD}, data=b"\0" * 12)}
        return write_npz(tmp_path / "hostile.npz", good, raw)
    return write_npz(tmp_path / "nan.npz", {**good, "params/head.b": target_value})


def one_error_line(capsys, e, path) -> str:
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and path in err, err
    return err


def test_evaluate_and_predict_refuse_hostile_and_nan_models(tmp_path, capsys, monkeypatch):
    from minivit.cli import evaluate, predict
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)
    hostile = hostile_checkpoint(tmp_path)
    nan = hostile_checkpoint(tmp_path, np.full(3, np.nan, np.float32))
    img = str(tmp_path / "x.npy")
    np.save(img, np.zeros((8, 8), np.uint8))
    for path in (hostile, nan):
        with pytest.raises(SystemExit) as e:
            run(evaluate.main, ["--checkpoint", path, "--data", str(tmp_path / "no-mnist")])
        one_error_line(capsys, e, path)
        with pytest.raises(SystemExit) as e:
            run(predict.main, ["--checkpoint", path, img])
        one_error_line(capsys, e, path)
    g = write_npz(tmp_path / "g.npz", good_google(), {"head/bias": npy_bytes(
        header={"descr": "<f4", "fortran_order": False, "shape": ABSURD}, data=b"\0" * 12)})
    with pytest.raises(SystemExit) as e:
        run(predict.main, ["--npz", g, img])
    assert "4 TB" in one_error_line(capsys, e, g)


def test_evaluate_process_prints_one_line(tmp_path):
    path = hostile_checkpoint(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MINIVIT_DEBUG"}
    out = subprocess.run([sys.executable, "-m", "minivit.evaluate", "--checkpoint", path],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"error: {path}: array 'params/head.b' declares shape")


# ---- writers ------------------------------------------------------------------------------------
class FullFile:
    """A file whose writes fail as on a full disk, after taking a few bytes."""

    def __init__(self, f, err):
        self._f, self._err, self.fail_after = f, err, 5

    def write(self, data):
        self._f.write(bytes(data)[:self.fail_after])
        raise OSError(self._err, os.strerror(self._err))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def failing_disk(monkeypatch, name: str, err: int = errno.ENOSPC) -> None:
    """From now on, atomic_write to a file called `name` fails: its writes raise OSError(err)
    (ENOSPC: a full disk). Other files are written as usual."""
    real_mkstemp, real_fdopen, made = files.tempfile.mkstemp, files.os.fdopen, {}

    def mkstemp(*args, **kwargs):
        fd, tmp = real_mkstemp(*args, **kwargs)
        made[fd] = os.path.basename(tmp)
        return fd, tmp

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return FullFile(f, err) if made.pop(fd, "").startswith(name + ".") else f
    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(files.os, "fdopen", fdopen)


def test_atomic_write_failures_are_write_errors(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    failing_disk(monkeypatch, "out.bin")
    with pytest.raises(WriteError) as e:
        atomic_write(path, lambda f: f.write(b"new contents"))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert str(e.value) == (f"cannot write {path}: No space left on device; the disk is full: "
                            f"free some space or write to another folder (what was there before "
                            f"is unchanged)")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    monkeypatch.undo()

    def refuse(err):
        def mkstemp(*a, **k):
            raise OSError(err, os.strerror(err), str(tmp_path))
        monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    for err, advice in ((errno.EACCES, "make the folder writable"),
                        (errno.EROFS, "the file system is read-only")):
        refuse(err)
        with pytest.raises(WriteError, match=f"cannot write {re.escape(str(path))}: .*{advice}"):
            atomic_write(path, lambda f: f.write(b"new"))
        assert path.read_bytes() == b"old"
    monkeypatch.undo()
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(WriteError, match="cannot write .*file/sub/x"):   # a file in the way
        atomic_write(blocker / "sub" / "x", lambda f: f.write(b"x"))


def test_stale_temps_are_removed_and_nothing_else(tmp_path):
    """Only atomic_write's temporary files of the given names, and only of processes that are
    gone (a running writer may still rename its file into place)."""
    keep = ["last.npz", "notes.tmp", "last.npz.tmp", "last.npz.abc.tmp", "other.npz.abcd1234.tmp",
            "last.npz.abcd1234.tmp.bak", f"last.npz.{os.getpid()}.abcd1234.tmp"]   # ours: running
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = ["last.npz.k3j_x9qa.tmp",                                 # an older minivit's
             f"metrics.jsonl.{gone}.abcd_123.tmp", f"best.npz.{gone}.00000000.tmp"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f"config.json.{gone}.abcd1234.tmp").mkdir()          # not a file: kept
    names = ("last.npz", "best.npz", "metrics.jsonl", "config.json")
    removed = clean_stale_temps(tmp_path, names)
    assert removed == sorted(str(tmp_path / n) for n in stale)
    assert sorted(os.listdir(tmp_path)) == sorted(keep + [f"config.json.{gone}.abcd1234.tmp"])
    assert clean_stale_temps(tmp_path / "missing", names) == []


def test_atomic_write_temp_names_are_recognized(tmp_path, monkeypatch):
    """The names atomic_write gives its temporary files are the ones clean_stale_temps removes."""
    seen = []
    real_replace = files.os.replace
    monkeypatch.setattr(files.os, "replace", lambda a, b: (seen.append(a), real_replace(a, b)))
    atomic_write(tmp_path / "last.npz", lambda f: f.write(b"x"))
    name = os.path.basename(seen[0])
    assert re.fullmatch(rf"last\.npz\.{os.getpid()}\.[a-z0-9_]{{8}}\.tmp", name), name
    (tmp_path / name.replace(str(os.getpid()), "999999999")).write_bytes(b"x")   # no such pid
    assert len(clean_stale_temps(tmp_path, ("last.npz",))) == 1


def test_export_and_attention_report_a_full_disk(tmp_path, capsys, monkeypatch):
    from minivit.cli import attention
    from minivit.cli import io as io_cli
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)
    m = ViT(ViTConfig(**CFG), seed=0)
    ckpt, out = str(tmp_path / "c.npz"), tmp_path / "g.npz"
    save_checkpoint(ckpt, m)
    save_google_npz(m, out)
    before = out.read_bytes()
    for err, words in ((errno.ENOSPC, "No space left on device"), (errno.EACCES, "ermission")):
        failing_disk(monkeypatch, "g.npz", err)
        with pytest.raises(SystemExit) as e:
            run(io_cli.main, ["export", ckpt, str(out), "--overwrite"])
        assert words in one_error_line(capsys, e, str(out))
        assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["c.npz", "g.minivit.json", "g.npz"]
        monkeypatch.undo()
        monkeypatch.delenv("MINIVIT_DEBUG", raising=False)
    if has("matplotlib"):
        png = str(tmp_path / "att.png")
        failing_disk(monkeypatch, "att.png")
        with pytest.raises(SystemExit) as e:
            run(attention.main, ["--quick", "--out", png])
        assert "No space left on device" in one_error_line(capsys, e, png)
        assert not os.path.exists(png) and not [f for f in os.listdir(tmp_path) if "att" in f]


def test_run_names_the_path_of_other_os_errors(capsys, monkeypatch):
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)

    def main(argv):
        raise PermissionError(errno.EACCES, "Permission denied", "/some/file")
    with pytest.raises(SystemExit) as e:
        run(main)
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: /some/file: Permission denied\n")


# ---- what the fuzz run found (tests/fuzz) -------------------------------------------------------
def raw_npy(header: str, data: bytes = b"", version=(1, 0), length=None) -> bytes:
    """A .npy stream with a header text written by hand (numpy's writer checks it)."""
    raw = header.encode("latin1")
    n = len(raw) if length is None else length
    size = struct.pack("<H", n) if version == (1, 0) else struct.pack("<I", n)
    return b"\x93NUMPY" + bytes(version) + size + raw + data


DAMAGED_HEADERS = {   # header text -> what the message says; numpy's parser let these escape
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,": "damaged header",   # TokenError
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), '''}": "damaged header",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 1: 2}": "not the keys",  # TypeError
    "{{1, 2}: 3}": "damaged header",                                      # unhashable set
    "{'descr': ('<f4', (2,)), 'fortran_order': False, 'shape': (2,)}": "sub-array type",
    "{'descr': ('<f4',), 'fortran_order': False, 'shape': (2,)}": "sub-array type",  # IndexError
    "{'descr': 'not a dtype', 'fortran_order': False, 'shape': (2,)}": "not one numpy knows",
    "{'descr': '<f4', 'fortran_order': 'yes', 'shape': (2,)}": "fortran_order",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (True, 2)}": "not a tuple of integers",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "(" * 300 + "2," + ")" * 300 + ")}":
        "damaged header",
    "[1, 2]": "not the keys",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "0, " * 100 + ")}":
        "which no NumPy array can have",                  # numpy's reshape: ValueError
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 2 ** 40, 2 ** 40, 0)}":
        "damaged header",                                 # not a literal: an expression
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 1099511627776, 1099511627776, 0)}":
        "which no NumPy array can have",                  # 0 bytes, yet numpy cannot reshape
}


@pytest.mark.parametrize("header", list(DAMAGED_HEADERS))
def test_damaged_npy_headers_are_file_errors(tmp_path, header):
    """Headers that made numpy's parser raise tokenize.TokenError, TypeError or IndexError:
    each reader names the file (a .npy image, and a member of a checkpoint and a Google .npz)."""
    data = raw_npy(header, b"" if ", 0" in header else np.zeros(2, np.float32).tobytes())
    path = tmp_path / "bad.npy"
    path.write_bytes(data)
    with pytest.raises(ImageFolderError, match=re.escape(DAMAGED_HEADERS[header])) as e:
        read_image(path)
    assert str(path) in str(e.value)
    good = good_checkpoint()
    path = write_npz(tmp_path / "c.npz", good, {"params/head.b": data})
    with pytest.raises(CheckpointError, match=r"array 'params/head.b' .*" +
                       re.escape(DAMAGED_HEADERS[header])):
        load_checkpoint(path)
    path = write_npz(tmp_path / "g.npz", good_google(), {"head/bias": data})
    with pytest.raises(GoogleNpzError, match=re.escape(str(path))):
        load_google_npz(path)


def test_npy_header_length_and_python2_headers(tmp_path):
    """A header length past the end of the file is refused before anything is read; a
    header Python 2 wrote ('shape': (2L,)) still loads."""
    arr = np.array([[1, 2], [3, 4]], np.uint8)
    for length, version in ((60000, (1, 0)), (2 ** 32 - 1, (2, 0))):
        p = tmp_path / f"long{version[0]}.npy"
        p.write_bytes(raw_npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2)}",
                              arr.tobytes(), version, length))
        with pytest.raises(ImageFolderError, match=r"cut short inside its .npy header"):
            read_image(p)
    p = tmp_path / "py2.npy"
    p.write_bytes(raw_npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2L, 2L), }\n",
                          arr.tobytes()))
    np.testing.assert_array_equal(read_image(p)[0], arr)


def _zip_field(data: bytes, sig: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    i = b.find(sig)
    struct.pack_into(fmt, b, i + offset, value)
    return bytes(b)


def test_zip_version_and_methods_numpy_never_writes(tmp_path):
    """A zip directory asking for a zip version zipfile lacks (NotImplementedError escaped),
    bzip2/LZMA members (numpy writes stored or deflated): one error naming the file, from
    load_checkpoint and from load_pretrained (which looks inside to choose the reader)."""
    from minivit.io import load_pretrained
    good = good_checkpoint()
    plain = open(write_npz(tmp_path / "c.npz", good), "rb").read()
    bad = _zip_field(plain, b"PK\x01\x02", 6, "<H", 0x0A63)    # 'needs version 99.x'
    for i, data in enumerate([bad]):
        p = tmp_path / f"v{i}.npz"
        p.write_bytes(data)
        for load in (load_checkpoint, load_pretrained):
            with pytest.raises(FileFormatError, match=re.escape(str(p))):
                load(p)
    p = tmp_path / "lzma.npz"
    with zipfile.ZipFile(p, "w") as zf:
        for k, v in good.items():
            zf.writestr(k + ".npy", npy_bytes(np.asarray(v)), compress_type=zipfile.ZIP_LZMA)
    with pytest.raises(CheckpointError, match=r"compressed with zip method 14; numpy writes"):
        load_checkpoint(p)


def test_overlapping_zip_members_are_refused_before_inflating(tmp_path):
    """Members whose directory entries point at the same deflated bytes (a zip bomb: each
    inflates the same data again) are refused before any is read."""
    big = np.zeros(1 << 20, np.float32)
    payload = npy_bytes(big)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.npy", payload)
    data = buf.getvalue()
    end = data.rfind(b"PK\x05\x06")
    cd_at = struct.unpack("<I", data[end + 16:end + 20])[0]
    entry = data[cd_at:end]
    n = 200                                               # 200 names for the same 4 MB member
    entries = b"".join(entry[:46] + (b"m%03d.npy" % i) + entry[46 + 5:] for i in range(n))
    entries = b"".join(e[:28] + struct.pack("<H", 8) + e[30:] for e in
                       [entries[i * (len(entry) + 3):(i + 1) * (len(entry) + 3)]
                        for i in range(n)])
    eocd = bytearray(data[end:])
    struct.pack_into("<HHI", eocd, 8, n, n, len(entries))
    p = tmp_path / "bomb.npz"
    p.write_bytes(data[:cd_at] + entries + bytes(eocd))
    tracemalloc.start()
    try:
        with pytest.raises(FileFormatError, match=r"overlaps the next member"):
            files.read_npz(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK
