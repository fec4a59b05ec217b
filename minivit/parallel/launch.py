"""`--procs N` on one host: how many processes a training command runs as, and the re-run of that
very command under mpiexec with N processes, each with its share of the cores, the way torchrun
starts its workers. The commands parse --procs and call ran_as_processes (cli/__init__.py);
the policy is here:

    --procs N      N processes (1: this process does the work, splitting batches over threads)
    --procs auto   on the CPU with more than one core and MPI installed: the most processes, at
                   most one per core, that split the batch evenly with >= 16 images each
                   (auto_procs); otherwise 1
    under mpiexec  this process is one of the job's already: 1 (and --procs N is refused)
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

from ..errors import Unavailable, UserError
from .mpi import INSTALL, launched_size


def mpiexec_path() -> str | None:
    """mpiexec next to this Python (the mpich wheel puts it there), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def mpi_available() -> bool:
    """Whether `--procs` can work here: mpi4py imports and an mpiexec is found."""
    import importlib.util
    return importlib.util.find_spec("mpi4py") is not None and mpiexec_path() is not None


def auto_procs(cores: int, batch_size: int, min_share: int = 16) -> int:
    """The most processes, at most one per core, that split the batch evenly with at least
    min_share images each (smaller shares run the small models' many NumPy calls for too
    little work); 1 when none does."""
    for p in range(min(cores, batch_size // min_share), 1, -1):
        if batch_size % p == 0:
            return p
    return 1


def resolve_procs(procs: str, batch_size: int, device: str = "cpu") -> int:
    """The number of processes a --procs value ('N' or 'auto') asks for (module docstring)."""
    if launched_size() > 1:                              # already one of mpiexec's processes
        if procs not in ("auto", "1"):
            raise UserError("--procs starts the processes itself; under mpiexec leave it out")
        return 1
    if procs == "auto":
        cores = os.cpu_count() or 1
        if device != "cpu" or cores < 2 or not mpi_available():
            return 1
        return auto_procs(cores, batch_size)
    try:
        n = int(procs)
    except ValueError:
        raise UserError(f"--procs must be a positive integer or auto, got {procs!r}") from None
    if n < 1:
        raise UserError(f"--procs must be a positive integer or auto, got {n}")
    return n


def relaunched(procs: str, batch_size: int, device: str, argv, module: str):
    """Run `python -m module argv` as the --procs processes under mpiexec when they are more than
    one, and return the job's exit status; None when this process should do the work itself.
    argv: the command's arguments (None: sys.argv[1:])."""
    n = resolve_procs(procs, batch_size, device)
    if n == 1:
        return None
    if batch_size % n:
        raise UserError(f"--batch-size {batch_size} is not divisible by --procs {n}; "
                        f"each process takes an equal share of every batch")
    argv = sys.argv[1:] if argv is None else list(argv)
    print(f"minivit: starting {n} processes under mpiexec ({max(1, (os.cpu_count() or 1) // n)} "
          f"core(s) each; --procs 1 runs one process)", file=sys.stderr)
    return relaunch(n, _without_procs(argv) + ["--procs", "1"], module)


def _without_procs(argv: list) -> list:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--procs":
            skip = True
        elif not a.startswith("--procs="):
            out.append(a)
    return out


def relaunch(procs: int, argv: list, module: str) -> int:
    """Run `python -m module argv` under `mpiexec -n procs`, with each process limited to its
    share of the cores before NumPy loads; returns the job's exit status."""
    if launched_size() > 1:
        raise UserError("--procs starts the processes itself; under mpiexec leave it out")
    exe = mpiexec_path()
    if exe is None or not mpi_available():
        raise Unavailable(f"--procs {procs} needs MPI: {INSTALL}")
    share = str(max(1, (os.cpu_count() or 1) // procs))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": share, "OMP_NUM_THREADS": share,
           "MKL_NUM_THREADS": share}
    cmd = [exe, "-n", str(procs), sys.executable, "-m", module, *argv]
    # Ctrl-C reaches mpiexec, which forwards it to the ranks (they agree on a step, save and
    # exit); this parent waits for them instead of dying first.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.call(cmd, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    finally:
        signal.signal(signal.SIGINT, old)
