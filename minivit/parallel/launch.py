"""`--procs N` on one host: re-run this very command under mpiexec with N processes, each with
its share of the cores, the way torchrun starts its workers."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

from .mpi import INSTALL, launched_size


def mpiexec_path() -> str | None:
    """mpiexec next to this Python (the mpich wheel puts it there), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def mpi_available() -> bool:
    """Whether `--procs` can work here: mpi4py imports and an mpiexec is found."""
    import importlib.util
    return importlib.util.find_spec("mpi4py") is not None and mpiexec_path() is not None


def relaunch(procs: int, argv: list, module: str) -> int:
    """Run `python -m module argv` under `mpiexec -n procs`, with each process limited to its
    share of the cores before NumPy loads; returns the job's exit status."""
    if launched_size() > 1:
        raise ValueError("--procs starts the processes itself; under mpiexec leave it out")
    exe = mpiexec_path()
    if exe is None or not mpi_available():
        raise RuntimeError(f"--procs {procs} needs MPI: {INSTALL}")
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

