"""Data-parallel training across processes and hosts: MPI through mpi4py (the `mpi` extra), and
NCCL between GPUs (nccl.py), bootstrapped over MPI.

    world = parallel.world()          # Single() outside mpiexec, else an MPIWorld
    world.rank, world.size            # this process, how many
    world.allreduce_(array)           # in place, summed over the processes
    cores_per_process(world)          # this host's cores / its processes (None: one process)

Every process runs the same program on its share of each global batch; after the backward pass
the gradients are summed by one in-place all-reduce (and the step's loss and hit counts by a
second, tiny one), so every process takes the same optimizer step.
"""
from __future__ import annotations

import array
import os
import stat
import sys
import time

import numpy as np

from ..errors import Unavailable

# Set by the launchers: MPICH's hydra (PMI_*), Open MPI (OMPI_*), PMIx-based ones (PMIX_*).
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
INSTALL = "pip install -e .[mpi]  (mpi4py and the mpich wheel, which brings mpiexec)"


def launched_size() -> int:
    """How many processes the MPI launcher started (1 when not under mpiexec)."""
    for var in SIZE_VARS:
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return 1


class Single:
    """The world of one process: every collective is the identity."""
    rank, size, local_rank, local_size = 0, 1, 0, 1
    is_root = True
    name = "single process"

    def allreduce_(self, buf):
        return buf

    def bcast(self, obj):
        return obj

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)


class MPIWorld:
    """COMM_WORLD of mpi4py, with the local (same-host) rank from a shared-memory split."""
    name = "MPI"

    def __init__(self, MPI):
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.is_root = self.rank == 0

    def allreduce_(self, buf):
        """Sum buf over the processes, in place (host arrays; GPU arrays go through NCCL, since
        the pip MPI builds are not CUDA-aware)."""
        if not isinstance(buf, np.ndarray):
            raise TypeError(f"MPI all-reduce takes host arrays, got {type(buf).__module__}; on the "
                            f"GPU the NCCL world does it (parallel/nccl.py)")
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every process of the job now (never a hang waiting in a collective)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)
        os._exit(code)                    # MPI_Abort may return before this process is killed


_world = None


def world():
    """The processes of this job: Single() unless started by mpiexec with more than one process.
    Building it changes nothing else: the commands give each process its share of the cores
    (cores_per_process) in the runtime they build."""
    global _world
    if _world is not None:
        return _world
    if launched_size() <= 1:
        _world = Single()
        return _world
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise Unavailable(f"this program was started by mpiexec with {launched_size()} "
                          f"processes, but mpi4py is not installed; {INSTALL}") from e
    _world = MPIWorld(MPI)
    return _world


def cores_per_process(world) -> int | None:
    """The cores each process of `world` should use: an equal share of this host's cores among
    its processes on the host (world.local_size), at least 1, since processes that each use
    every core run several times slower; None for a one-process world, which keeps the
    runtime's default (threads.Runtime: the cores its BLAS started with)."""
    if world.size <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // world.local_size)


def together(world, fn, root_first: bool = False):
    """fn() on every process, the outcome agreed: when it raises on any process, every process
    ends here with one error line for the job (the lowest failing rank's) and no abort, since
    no process is left waiting in a collective. root_first: the root runs fn first and the others
    only once it has succeeded (a download happens once, and a failed one is reported once).
    Returns fn()'s value; for one process, simply fn()."""
    if world.size == 1:
        return fn()
    error = None
    if root_first:
        if world.is_root:
            try:
                value = fn()
            except Exception as e:                        # any: the others must learn of it
                error = e
        if world.bcast(error is not None):                # the root failed: it alone reports
            if world.is_root:
                raise _shared(error)
            raise SystemExit(2)
    if not (root_first and world.is_root):
        try:
            value = fn()
        except Exception as e:
            error = e
    failed = np.zeros(world.size)
    failed[world.rank] = error is not None
    failed = world.allreduce_(failed)
    if failed.any():
        if error is not None and world.rank == int(np.flatnonzero(failed)[0]):
            raise _shared(error)
        raise SystemExit(2)
    return value


def on_root(world, fn) -> None:
    """fn() on the root alone (a write: a checkpoint, the metrics, a plot), the outcome shared:
    when it raises, the root reports it and every process exits cleanly, without an abort (the
    others would otherwise wait for the root at the next collective). One broadcast of a flag."""
    if world.size == 1:
        fn()
        return
    error = None
    if world.is_root:
        try:
            fn()
        except Exception as e:                            # any: the others must learn of it
            error = e
    if world.bcast(error is not None):
        if world.is_root:
            raise _shared(error)
        raise SystemExit(2)


def failed_in_step(world, error: Exception | None, failures: float):
    """After a step's all-reduce, which summed each process's failed flag into `failures`: when
    some process failed, it raises its own error (marked shared: one line per failure, no
    abort) and the others exit cleanly; otherwise nothing."""
    if failures > 0:
        if error is not None:
            raise _shared(error)
        raise SystemExit(2)


def failed_together(world, error: Exception):
    """An error every process meets at the same point (a loss that diverged, known to all after
    the all-reduce): the root's to raise and report, the others exit cleanly."""
    if world.size > 1 and not world.is_root:
        raise SystemExit(2)
    return _shared(error) if world.size > 1 else error


def _shared(error: Exception) -> Exception:
    """Mark an error every process knows about (is_shared): the commands print it once and exit
    without MPI's abort."""
    error.minivit_shared = True
    return error


def is_shared(error: BaseException) -> bool:
    return getattr(error, "minivit_shared", False)


def fail(world, message: str, code: int = 2) -> None:
    """Print this process's error and end the job: the path of a failure the other processes
    cannot learn of at a collective (those end together: together, on_root, the step's failed
    flag), so some may be waiting in one. The line is flushed, and the abort waits until the
    launcher has read it from the pipe (drained), so the abort cannot overtake it."""
    prefix = "" if world.is_root else f"[rank {world.rank}] "
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    drained(sys.stderr)
    world.abort(code)


def drained(stream, limit_s: float = 5.0) -> bool:
    """Wait until a pipe's reader has taken everything written to it (FIONREAD on the pipe: the
    bytes not yet read), at most limit_s; True at once for a terminal, a file or where the count
    cannot be asked. Not a fixed pause: it returns as soon as the launcher has the line."""
    try:
        import fcntl
        import termios
        fd = stream.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return True
        count = array.array("i", [0])
        deadline = time.monotonic() + limit_s
        while True:
            fcntl.ioctl(fd, termios.FIONREAD, count)
            if count[0] == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
    except (ImportError, OSError, ValueError, AttributeError):
        return True
