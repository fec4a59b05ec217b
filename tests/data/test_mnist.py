"""data/mnist.py and data/download.py: IDX parsing, verified loading with mirror fallback (no
network)."""
import gzip
import hashlib
import os

import numpy as np
import pytest

from minivit import files
from minivit.data import download
from minivit.data import mnist as data
from minivit.data.download import DataError
from minivit.data.mnist import MNIST_MEAN, MNIST_STD, load_mnist, parse_idx, read_idx

from conftest import CODES, idx_bytes


def fake_mnist(n_train=12, n_test=5, seed=0) -> dict:
    """Small MNIST-shaped arrays keyed by file name."""
    rng = np.random.default_rng(seed)
    return {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}


@pytest.fixture
def fake(monkeypatch):
    """Fake MNIST arrays, with MNIST_FILES patched to the sums of their IDX encodings."""
    arrays = fake_mnist()
    for name, arr in arrays.items():
        monkeypatch.setitem(data.MNIST_FILES, name, hashlib.sha256(idx_bytes(arr)).hexdigest())
    return arrays


def write_files(folder, arrays, gz=True):
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)


def no_fetch(url, timeout):
    raise AssertionError(f"unexpected download of {url}")


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(arr)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 7                                  # a writable copy


def test_gzip_detected_by_magic_not_name(tmp_path):
    arr = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    (tmp_path / "a.gz").write_bytes(idx_bytes(arr))                 # raw, named .gz
    (tmp_path / "b").write_bytes(gzip.compress(idx_bytes(arr)))     # gzip, no .gz
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), arr)


@pytest.mark.parametrize("dtype", list(CODES))
def test_parse_idx_dtypes(dtype):
    arr = (np.arange(6).reshape(2, 3) * 37 - 50).astype(dtype)
    out = parse_idx(idx_bytes(arr))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


GOOD = idx_bytes(np.zeros((2, 3), np.uint8))


@pytest.mark.parametrize("blob, words", [
    (b"\x08\x03\x00\x00" + GOOD[4:], ["not an IDX file", "0803"]),
    (b"", ["not an IDX file", "empty"]),
    (GOOD[:2] + b"\x07" + GOOD[3:], ["unknown IDX dtype code 0x07"]),
    (GOOD[:3] + b"\x00", ["0 dimensions"]),
    (GOOD[:9], ["truncated IDX header", "9 bytes, need 12"]),
    (GOOD[:-1], ["truncated", "5 bytes", "expected 6", "(2, 3)"]),
    (GOOD + b"\x00", ["extra bytes", "7 bytes", "expected 6"]),
])
def test_read_idx_errors(tmp_path, blob, words):
    path = tmp_path / "bad-idx2-ubyte"
    path.write_bytes(blob)
    with pytest.raises(DataError) as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and "re-download" in msg and "--data DIR" in msg
    for w in words:
        assert w in msg
    assert isinstance(e.value, ValueError)


def test_read_idx_broken_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(GOOD)[:-6])
    with pytest.raises(DataError, match="broken gzip data.*re-download"):
        read_idx(path)


def check_loaded(out, arrays):
    x_tr, y_tr, x_te, y_te = out                                   # a plain 4-tuple too
    for got, name in zip((x_tr, y_tr, x_te, y_te), data.MNIST_FILES):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, arrays[name])
    assert out.x_train.shape == (12, 28, 28) and out.y_test.shape == (5,)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_local(tmp_path, fake, gz):
    write_files(tmp_path, fake, gz=gz)
    before = sorted(os.listdir(tmp_path))
    check_loaded(load_mnist(tmp_path, download=True, fetch=no_fetch), fake)
    assert sorted(os.listdir(tmp_path)) == before                 # nothing written


def test_load_mnist_env_var(tmp_path, fake, monkeypatch):
    write_files(tmp_path, fake)
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path))
    assert data.default_data_dir() == str(tmp_path)
    check_loaded(load_mnist(download=False), fake)


def test_default_data_dir(monkeypatch):
    monkeypatch.delenv("MINIVIT_DATA", raising=False)
    monkeypatch.setenv("HOME", "/home/someone")
    assert data.default_data_dir() == os.path.join("/home/someone", ".cache", "minivit", "mnist")


def test_checksum_mismatch(tmp_path, fake):
    write_files(tmp_path, fake)
    real_sum = "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    data.MNIST_FILES["t10k-images-idx3-ubyte"] = real_sum           # restored by the fixture
    got = hashlib.sha256(idx_bytes(fake["t10k-images-idx3-ubyte"])).hexdigest()
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path, download=False)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and real_sum in msg and got in msg
    assert "delete it and re-download" in msg and "--data DIR" in msg


def test_real_sums_reject_fake_file(tmp_path):
    """Without patched sums, a well-formed fake file fails the real SHA-256 check."""
    write_files(tmp_path, fake_mnist(), gz=False)
    with pytest.raises(DataError, match="train-images-idx3-ubyte: SHA-256 .* expected ba8910"):
        load_mnist(tmp_path, download=False)


def test_missing_files_without_download(tmp_path, fake):
    write_files(tmp_path, {k: v for k, v in fake.items() if "train" in k})
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path, download=False, fetch=no_fetch)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "train-images" not in msg and str(tmp_path) in msg
    assert "--data DIR" in msg and "MINIVIT_DATA" in msg


def test_count_mismatch(tmp_path, fake):
    fake = dict(fake, **{"train-labels-idx1-ubyte": fake["train-labels-idx1-ubyte"][:-1]})
    data.MNIST_FILES["train-labels-idx1-ubyte"] = hashlib.sha256(
        idx_bytes(fake["train-labels-idx1-ubyte"])).hexdigest()
    write_files(tmp_path, fake)
    with pytest.raises(DataError, match="train: 12 images but 11 labels"):
        load_mnist(tmp_path, download=False)


MIRRORS = ("https://m1.invalid/mnist/", "https://m2.invalid/mnist", "http://m3.invalid/")


def test_all_mirrors_fail(tmp_path, fake):
    calls = []

    def fetch(url, timeout):
        calls.append((url, timeout))
        raise OSError(f"network unreachable #{len(calls)}")

    with pytest.raises(DataError) as e:
        load_mnist(tmp_path / "cache", mirrors=MIRRORS, fetch=fetch, timeout=3.0, verbose=False)
    msg = str(e.value)
    first = "train-images-idx3-ubyte.gz"
    assert calls == [(m.rstrip("/") + "/" + first, 3.0) for m in MIRRORS]
    for i, m in enumerate(MIRRORS):
        assert f"{m.rstrip('/')}/{first}: OSError: network unreachable #{i + 1}" in msg
    assert "--data DIR" in msg and "MINIVIT_DATA" in msg and "by hand" in msg
    assert not (tmp_path / "cache").exists() or os.listdir(tmp_path / "cache") == []


def test_default_fetch_uses_module_urlopen(tmp_path, fake, monkeypatch):
    seen = []

    def urlopen(req, timeout):
        seen.append(req.full_url)
        raise OSError("offline")

    monkeypatch.setattr(download, "_urlopen", urlopen)
    with pytest.raises(DataError, match="(?s)could not download.*OSError: offline"):
        load_mnist(tmp_path, mirrors=MIRRORS[:2], verbose=False)
    assert seen == [m.rstrip("/") + "/train-images-idx3-ubyte.gz" for m in MIRRORS[:2]]


def test_mirror_fallback_writes_atomically(tmp_path, fake, monkeypatch):
    served = {name: gzip.compress(idx_bytes(arr)) for name, arr in fake.items()}
    served["t10k-labels-idx1-ubyte"] = idx_bytes(fake["t10k-labels-idx1-ubyte"])  # served raw
    calls, replaced = [], []

    def fetch(url, timeout):
        calls.append(url)
        if url.startswith(MIRRORS[0]):
            raise TimeoutError("timed out")
        if url.startswith("https://m2.invalid") and "train-labels" in url:
            return gzip.compress(b"garbage")                        # fails the checksum
        return served[url.rsplit("/", 1)[1][:-3]]

    real_replace = os.replace

    def spy_replace(src, dst):
        replaced.append((str(src), str(dst)))
        assert os.path.exists(src) and not os.path.exists(dst)
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", spy_replace)
    cache = tmp_path / "new" / "cache"
    check_loaded(load_mnist(cache, mirrors=MIRRORS, fetch=fetch, verbose=False), fake)
    assert calls[:2] == [MIRRORS[0] + "train-images-idx3-ubyte.gz",
                         "https://m2.invalid/mnist/train-images-idx3-ubyte.gz"]
    assert "http://m3.invalid/train-labels-idx1-ubyte.gz" in calls          # after the bad sum
    want = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte"}
    assert set(os.listdir(cache)) == want                                    # no temp files left
    assert {os.path.basename(d) for _, d in replaced} == want
    for src, dst in replaced:
        assert os.path.dirname(src) == os.path.dirname(dst) == str(cache) and src != dst
    for name in fake:
        path = cache / name if name == "t10k-labels-idx1-ubyte" else cache / (name + ".gz")
        assert path.read_bytes() == served[name]
    check_loaded(load_mnist(cache, fetch=no_fetch), fake)                     # now cached


def test_unwritable_cache(tmp_path, fake):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    fetch = lambda url, timeout: gzip.compress(idx_bytes(fake["train-images-idx3-ubyte"]))
    with pytest.raises(DataError, match="cannot write into .*writable folder"):
        load_mnist(blocker / "sub", mirrors=MIRRORS[:1], fetch=fetch, verbose=False)


def test_real_mnist():
    folder = os.environ.get("MINIVIT_DATA")
    if not folder or not all(data._find(folder, n) for n in data.MNIST_FILES):
        pytest.skip("set MINIVIT_DATA to a folder with the four MNIST files")
    x_tr, y_tr, x_te, y_te = load_mnist(folder, download=False)
    assert x_tr.shape == (60000, 28, 28) and y_tr.shape == (60000,)
    assert x_te.shape == (10000, 28, 28) and y_te.shape == (10000,)
    assert x_tr.dtype == y_tr.dtype == x_te.dtype == y_te.dtype == np.uint8
    assert np.bincount(y_tr).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
                                          5949]
    assert np.bincount(y_te).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    hist = np.bincount(x_tr.ravel(), minlength=256) / x_tr.size      # pixel value frequencies
    v = np.arange(256) / 255.0
    mean = (hist * v).sum()
    assert abs(mean - MNIST_MEAN) < 1e-4
    assert abs(np.sqrt((hist * (v - mean) ** 2).sum()) - MNIST_STD) < 1e-4


def test_gzip_is_inflated_no_further_than_the_idx_header_declares(tmp_path):
    """A .gz that inflates to far more than its IDX header declares (found by the fuzz run:
    gzip.decompress inflated all of it first, up to deflate's 1032x the file) is refused having
    inflated only the declared size and one byte more."""
    import tracemalloc
    good = idx_bytes(np.zeros((2, 3), np.uint8))
    path = tmp_path / "bomb-idx2-ubyte.gz"
    path.write_bytes(gzip.compress(good + bytes(64 << 20), compresslevel=9))
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"IDX payload has extra bytes"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    path.write_bytes(gzip.compress(good) + gzip.compress(b""))        # two members: one file
    np.testing.assert_array_equal(read_idx(path), np.zeros((2, 3), np.uint8))


def test_shapes_no_array_can_have():
    """100 zero dimensions (no payload; found by the fuzz run) and dimensions whose product, a
    0 aside, overflows an index (found by atheris: crash-094e27b6) escaped as numpy's
    ValueError."""
    with pytest.raises(DataError, match=r"IDX header gives 100 dimensions \(1 to 32"):
        parse_idx(bytes([0, 0, 0x08, 100]) + bytes(400), "x-idx1-ubyte")
    crash = bytes.fromhex("00000d0a00000002000000033ea86eb5be84ffffffffffffff030100033ea8"
                          "01000000000000086eb5be844e")
    with pytest.raises(DataError, match=r"which no array can have"):
        parse_idx(crash, "crash-idx")
