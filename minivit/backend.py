"""Array backend: NumPy by default, CuPy by one switch.

This is the only module that imports cupy. Code that *creates* arrays (init, data) asks
``xp()``; layer code follows its inputs with ``xp_of(x)`` and never looks at a global.
"""
from __future__ import annotations

import numpy as np

_xp = np          # the module that new arrays are created with
_cupy = None      # the cupy module once imported, else None


def _import_cupy():
    """Import cupy and check a GPU is visible; raise a clear error saying what to install."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "the GPU backend needs CuPy, which is not installed; install it with "
            "`pip install -e .[gpu]` (CuPy for CUDA 12) or a cupy-cudaXXx wheel matching "
            "your CUDA driver, or run on the CPU with --device cpu") from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # cupy raises its own CUDARuntimeError when no driver is present
        raise RuntimeError(f"CuPy is installed but no usable CUDA GPU was found ({e}); "
                           f"check `nvidia-smi` or run on the CPU with --device cpu") from e
    if n == 0:
        raise RuntimeError("CuPy is installed but no CUDA GPU is visible; "
                           "run on the CPU with --device cpu")
    _cupy = cupy
    return cupy


def use(name: str) -> None:
    """Select the backend for new arrays: 'numpy'/'cpu' or 'cupy'/'gpu'."""
    global _xp
    if name in ("numpy", "cpu"):
        _xp = np
    elif name in ("cupy", "gpu", "cuda"):
        _xp = _import_cupy()
    else:
        raise ValueError(f"unknown backend {name!r}; use 'cpu' (NumPy) or 'gpu' (CuPy)")


def xp():
    """The array module new arrays are created with (numpy or cupy)."""
    return _xp


def name() -> str:
    return "cupy" if _xp is not np else "numpy"


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one GPU (never raises)."""
    try:
        _import_cupy()
        return True
    except Exception:
        return False


def xp_of(*arrays):
    """The array module that owns these arrays: cupy for cupy arrays, else numpy."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def to_numpy(a) -> np.ndarray:
    """Bring an array to the host (a no-op for NumPy arrays)."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def asarray(a, dtype=None):
    """Move a host array to the current backend."""
    return _xp.asarray(a, dtype=dtype)


def rng(seed: int):
    """A seeded random Generator on the current backend."""
    return _xp.random.default_rng(seed)


def synchronize() -> None:
    """Wait for queued GPU work (call before reading a clock); a no-op on NumPy."""
    if _cupy is not None:
        _cupy.cuda.get_current_stream().synchronize()


_erf_host = None


def erf(x):
    """Elementwise error function on either backend.

    NumPy has no erf: SciPy's is used when installed (fast); otherwise math.erf is applied
    element by element (exact, but about 100 ns per element)."""
    global _erf_host
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        import cupyx.scipy.special
        return cupyx.scipy.special.erf(x)
    if _erf_host is None:
        try:
            from scipy.special import erf as _erf_host  # noqa: F811
        except ImportError:
            _erf_host = erf_python
    return _erf_host(x).astype(x.dtype, copy=False)


def erf_python(x) -> np.ndarray:
    """math.erf element by element: exact to double precision, slow."""
    import math
    return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)
