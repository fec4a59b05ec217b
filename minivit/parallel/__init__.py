"""Running one model over more than one core, process or machine.

    threads.py   one process: the batch split over worker threads (each with its share of the
                 cores as BLAS threads)
    mpi.py       many processes (mpiexec, or `--procs N`): data-parallel training over MPI
    nccl.py      many GPUs: the all-reduce on the device, bootstrapped over MPI
    launch.py    `--procs N`: start N local processes under mpiexec, as torchrun does
"""
from .mpi import Single, launched_size, world

__all__ = ["Single", "launched_size", "world"]
