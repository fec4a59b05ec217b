"""Array backend: NumPy by default, CuPy by one switch.

This is the only module that imports cupy. Code that *creates* arrays (init, data) asks
``xp()``; layer code follows its inputs with ``xp_of(x)`` and never looks at a global.
"""
from __future__ import annotations

import numpy as np

from .errors import Unavailable, UserError

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
        raise Unavailable(
            "the GPU backend needs CuPy, which is not installed; install it with "
            "`pip install -e .[gpu]` (CuPy for CUDA 12), `.[gpu-cuda13]` (CUDA 13) or the "
            "cupy-cudaXXx wheel matching your CUDA driver, or run on the CPU with --device cpu") from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # cupy raises its own CUDARuntimeError when no driver is present
        raise Unavailable(f"CuPy is installed but no usable CUDA GPU was found ({e}); "
                          f"check `nvidia-smi` or run on the CPU with --device cpu") from e
    if n == 0:
        raise Unavailable("CuPy is installed but no CUDA GPU is visible; "
                          "run on the CPU with --device cpu")
    _cupy = cupy
    return cupy


def use(name: str, tf32: bool | None = None) -> None:
    """Select the backend for new arrays: 'numpy'/'cpu' or 'cupy'/'gpu'.
    tf32=True lets cuBLAS run float32 matmuls on TF32 tensor cores (faster, ~1e-3 relative;
    see set_tf32), False turns that off, None leaves CuPy's own default (the CUPY_TF32 variable)."""
    global _xp
    if name in ("numpy", "cpu"):
        _xp = np
    elif name in ("cupy", "gpu", "cuda"):
        _xp = _import_cupy()
        if tf32 is not None:
            set_tf32(tf32)
    else:
        raise UserError(f"unknown backend {name!r}; use 'cpu' (NumPy) or 'gpu' (CuPy)")


def cupy():
    """The cupy module (imported on first use); for the GPU kernels in kernels/fused.py."""
    return _import_cupy()


def set_tf32(enabled: bool) -> None:
    """Opt in (or out) of TF32 tensor-core matmuls for float32 on the GPU (Ampere and newer).

    CuPy reads CUPY_TF32 when it first multiplies float32 matrices; after that the compute type
    is changed through CuPy's own setter where this CuPy version has one. CuPy applies it to its
    2-D matmuls (every linear layer here); its batched matmuls (attention's q k^T and A v) do not
    consult it and stay float32."""
    import os
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    if _cupy is None:
        return
    try:
        from cupy._core import _routines_linalg as linalg
        linalg.set_compute_type(np.dtype("float32"), linalg.COMPUTE_TYPE_TF32 if enabled
                                else linalg.COMPUTE_TYPE_DEFAULT)
    except (ImportError, AttributeError):
        pass              # older CuPy: CUPY_TF32 takes effect if no float32 matmul ran yet


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
    """A seeded random Generator on the current backend: NumPy's default, or on CuPy one over
    Philox4x3210, a counter-based generator that is cheap to set up (CuPy's default, XORWOW,
    initializes a large table of cuRAND states for every new generator)."""
    if _xp is np:
        return np.random.default_rng(seed)
    try:
        return _xp.random.Generator(_xp.random.Philox4x3210(seed))
    except (AttributeError, TypeError):   # a CuPy without it
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
