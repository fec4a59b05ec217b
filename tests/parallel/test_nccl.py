"""The NCCL world (parallel/nccl.py) with a one-process communicator: an in-place sum on the
device, host statistics through a device round trip. Needs CuPy and a GPU; skipped otherwise."""
import numpy as np
import pytest

from minivit import backend

pytestmark = pytest.mark.skipif(not backend.gpu_available(), reason="needs CuPy and a CUDA GPU")


def test_one_rank_nccl_allreduce_in_place():
    backend.use("gpu")
    try:
        import cupy
        from minivit.parallel.nccl import gpu_world
        w = gpu_world()
        assert (w.rank, w.size) == (0, 1)
        for dtype in ("float32", "float64"):
            x = cupy.arange(10, dtype=dtype)
            ptr = x.data.ptr
            w.allreduce_(x)
            assert x.data.ptr == ptr
            np.testing.assert_array_equal(cupy.asnumpy(x), np.arange(10))
        counts = np.array([[3, 1], [0, 2]], dtype=np.int64)       # a confusion matrix
        w.allreduce_(counts)
        assert counts.tolist() == [[3, 1], [0, 2]]
    finally:
        backend.use("numpy")
