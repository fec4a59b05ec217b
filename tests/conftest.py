"""Every test that takes the `xp` fixture runs on NumPy, and again on CuPy when a GPU is present."""
import numpy as np
import pytest

from minivit import backend

BACKENDS = ["numpy", "cupy"]


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
