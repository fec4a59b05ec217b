"""Running one model over more than one core, process or machine.

    threads.py   one process: its CPU runtime (threads.Runtime, held by each model), the batch
                 split over worker threads (each with its share of the cores as BLAS threads)
    mpi.py       many processes (mpiexec, or `--procs N`): data-parallel training over MPI
    nccl.py      many GPUs: the all-reduce on the device, bootstrapped over MPI
    launch.py    `--procs N`: start N local processes under mpiexec, as torchrun does
"""
from .mpi import Single, cores_per_process, launched_size, world


def training_world(device: str = "cpu"):
    """The processes of this job as training sees them: world(), and on the GPU with more than
    one process the NCCL world over it (one GPU per local process, gradients summed on the
    device)."""
    w = world()
    if device == "gpu" and w.size > 1:
        from .nccl import NcclWorld
        return NcclWorld(w)
    return w


__all__ = ["Single", "cores_per_process", "launched_size", "world", "training_world"]
