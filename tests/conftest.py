"""Shared test helpers and fixtures.

- `xp`: every test that takes it runs on NumPy, and again on CuPy when a GPU is present.
- `engine`: every test that uses it runs with the fast kernels (minivit/kernels/), then with
  them off (the reference pairs of minivit/layers/ alone).
- `needs(...)` marks: a test that needs an optional extra is skipped, with the reason, when the
  extra is not installed (the README's `pip install -e ".[test]"` has none of them).
- Helpers: randn, randomize_params, images, relerr, load_example, idx_bytes,
  synthetic_mnist, digit, make_folder.
"""
import hashlib
import importlib.util
import os

import numpy as np
import pytest

from minivit import backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ["numpy", "cupy"]
CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
         np.float64: 0x0E}                       # IDX dtype codes
EXTRAS = {   # import name -> the extra that installs it
    "torch": "torch", "matplotlib": "plot", "PIL": "images", "scipy": "fast-erf",
    "mpi4py": "mpi", "safetensors": "hub",
}


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def needs(module: str):
    """Skip unless `module` imports; the reason names the extra to install."""
    extra = EXTRAS.get(module, module)
    return pytest.mark.skipif(not has(module), reason=f"needs {module} (pip install -e .[{extra}])")


needs_torch = needs("torch")
needs_mpl = needs("matplotlib")
needs_pil = needs("PIL")


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array module under test; selects the matching backend for array creation."""
    if request.param == "cupy" and not backend.gpu_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    backend.use(request.param)
    yield backend.xp()
    backend.use("numpy")


def randn(xp, *shape, seed=None, scale=1.0):
    """Random float64 normal array on the backend xp (host-drawn for reproducibility)."""
    rng = np.random.default_rng(seed if seed is not None else sum(shape) * 7919 + len(shape))
    return xp.asarray(rng.standard_normal(shape) * scale)


def randomize_params(model, seed=0, scale=0.3) -> None:
    """Random non-degenerate values for every parameter (LayerNorm scales around 1)."""
    rng = np.random.default_rng(seed)
    for k, v in model.params.items():
        v[...] = backend.asarray(rng.standard_normal(v.shape) * scale
                                 + (1.0 if "norm" in k and k.endswith(".w") else 0.0))


def images(B, C, S, seed=1):
    """Random float64 images (B, C, S, S) on the host."""
    return np.random.default_rng(seed).standard_normal((B, C, S, S))


def relerr(a, b) -> float:
    """max |a - b| / max |b|, with b a non-zero reference of the same shape."""
    a, b = np.asarray(backend.to_numpy(a), np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{a.shape} vs reference {b.shape}"
    assert np.abs(b).max() > 0, "all-zero reference proves nothing"
    return float(np.abs(a - b).max() / np.abs(b).max())


def load_example(name: str):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod



def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode arr as IDX: 00 00 <code> <ndim>, big-endian uint32 dims, big-endian payload."""
    head = bytes([0, 0, CODES[arr.dtype.type], arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_mnist(folder, monkeypatch, n_train=1000, n_test=200, offline=True) -> str:
    """folder/ with synthetic_mnist's four IDX files, their SHA-256 sums accepted by the loader
    for this test (monkeypatch), and with offline any download attempt failing. Returns the
    folder as a str."""
    from minivit.data import download
    from minivit.data import mnist as mnist_data
    os.makedirs(folder, exist_ok=True)
    for name, arr in synthetic_mnist(n_train=n_train, n_test=n_test).items():
        raw = idx_bytes(arr)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(raw)
        monkeypatch.setitem(mnist_data.MNIST_FILES, name, hashlib.sha256(raw).hexdigest())
    if offline:
        monkeypatch.setattr(download, "_urlopen", None)
    return str(folder)


def synthetic_mnist(n_train=1000, n_test=200, seed=0) -> dict:
    """28x28 uint8 'digits': class k is a bright bar on row band k (plus noise): learnable."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for k in range(10):
            x[y == k, 2 + 2 * k:4 + 2 * k, 4:24] = 255
        return x, y
    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return {"train-images-idx3-ubyte": xtr, "train-labels-idx1-ubyte": ytr,
            "t10k-images-idx3-ubyte": xte, "t10k-labels-idx1-ubyte": yte}



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


@pytest.fixture(params=["fast", "reference"])
def engine(request):
    """Run the test with the fast kernels on ("fast"), then off ("reference")."""
    from minivit import kernels
    if request.param == "fast":
        yield "fast"
        return
    with kernels.disabled():
        yield "reference"
