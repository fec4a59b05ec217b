"""The all-reduce between GPUs: NCCL through cupy.cuda.nccl, one GPU per local process.

The communicator is bootstrapped over MPI (rank 0 makes NCCL's unique id and broadcasts it), and
the gradients are summed on the device: the pip MPI builds are not CUDA-aware, so MPI never sees
a CuPy array. With one process (or a one-rank communicator, as the tests use) it still runs.
"""
from __future__ import annotations

from .. import backend
from ..errors import Unavailable
from .mpi import Single

NCCL_INSTALL = ("pip install nvidia-nccl-cu12 (CUDA 12) or nvidia-nccl-cu13 (CUDA 13), matching "
                "your CuPy, or train on one GPU (--procs 1)")


def load_nccl():
    """CuPy's NCCL module, or a clear error: CuPy imports cupy.cuda.nccl even when libnccl
    cannot be loaded (it then sets available = False and fails later, on first use)."""
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        raise Unavailable(f"multi-GPU training needs NCCL, which CuPy cannot import ({e}); "
                          f"{NCCL_INSTALL}") from e
    if not getattr(nccl, "available", True):
        raise Unavailable(f"multi-GPU training needs NCCL, but CuPy could not load libnccl; "
                          f"{NCCL_INSTALL}")
    return nccl


class NcclWorld:
    """Wraps an MPI world (or Single): same rank and size, but allreduce_ runs on the GPU."""
    name = "NCCL"

    def __init__(self, mpi_world):
        cupy = backend.cupy()
        nccl = load_nccl()
        self.mpi, self.nccl, self.cupy = mpi_world, nccl, cupy
        self.rank, self.size = mpi_world.rank, mpi_world.size
        self.local_rank, self.local_size = mpi_world.local_rank, mpi_world.local_size
        self.is_root = mpi_world.is_root
        n_gpus = cupy.cuda.runtime.getDeviceCount()
        if self.local_size > n_gpus:
            raise Unavailable(f"{self.local_size} processes on this host but {n_gpus} GPU(s); "
                              f"start at most one process per GPU")
        cupy.cuda.Device(self.local_rank).use()
        uid = mpi_world.bcast(nccl.get_unique_id() if self.is_root else None)
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64,
                       "int64": nccl.NCCL_INT64}

    def allreduce_(self, buf):
        """Sum a CuPy array over the processes, in place, on the current stream."""
        if not isinstance(buf, self.cupy.ndarray):
            buf_dev = self.cupy.asarray(buf)              # host statistics: a round trip
            self.allreduce_(buf_dev)
            buf[...] = self.cupy.asnumpy(buf_dev)
            return buf
        stream = self.cupy.cuda.get_current_stream()
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._types[buf.dtype.name],
                            self.nccl.NCCL_SUM, stream.ptr)
        return buf

    def bcast(self, obj):
        return self.mpi.bcast(obj)

    def barrier(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()
        self.mpi.barrier()

    def abort(self, code: int = 1) -> None:
        self.mpi.abort(code)


def gpu_world(mpi_world=None) -> NcclWorld:
    """NCCL over the given MPI world (default: a one-process world)."""
    return NcclWorld(mpi_world if mpi_world is not None else Single())
