"""The command lines, one module each: parse the flags, build the pieces, call the library.

    train.py       python -m minivit.train      minivit-train       (examples/train_mnist.py)
    finetune.py    python examples/finetune.py   minivit-finetune
    evaluate.py    python -m minivit.evaluate   minivit-evaluate
    predict.py     python -m minivit.predict    minivit-predict
    io.py          python -m minivit.io         minivit-io
    attention.py   python examples/attention_maps.py   minivit-attention

Every command runs through run(): a user error prints one `error:` line, not a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, ArithmeticError)


def run(main, argv=None):
    """Call main(argv). A ValueError/TypeError/OSError/RuntimeError/ArithmeticError (bad data,
    a bad file (files.FileFormatError), a failed write (files.WriteError: disk full, no
    permission), a bad flag, no GPU, a diverging loss) prints one 'error: <message>' line naming
    the file where there is one, and exits with status 2; MINIVIT_DEBUG=1 shows the traceback.
    Under mpiexec a failing process ends the whole job (parallel/mpi.py fail): the error is
    printed once, and no process is left waiting in a collective."""
    try:
        return main(argv)
    except USER_ERRORS as e:
        if os.environ.get("MINIVIT_DEBUG") == "1" and not _under_mpi():
            raise
        message = f"error: {describe(e)}"
        if _under_mpi():
            _fail_job(message)
        print(f"{message}\n(set MINIVIT_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(2)
    except Exception:
        if not _under_mpi():
            raise
        import traceback
        _fail_job(traceback.format_exc().rstrip())


def _under_mpi() -> bool:
    from ..parallel import launched_size
    return launched_size() > 1


def _fail_job(message: str) -> None:
    from ..parallel import mpi
    mpi.fail(mpi.world(), message)


def describe(e: BaseException) -> str:
    """The message of a user error; an OSError from outside minivit's own errors gets its path."""
    from ..files import FileFormatError, WriteError
    if isinstance(e, OSError) and not isinstance(e, (FileFormatError, WriteError)) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    return str(e)


def add_device_args(ap: argparse.ArgumentParser, workers: bool = True) -> None:
    """--device, --tf32 and (for training) --workers."""
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--tf32", action="store_true", help="GPU: TF32 tensor-core matmuls (faster, "
                    "about 1e-3 relative error)")
    if workers:
        ap.add_argument("--workers", type=int, default=None,
                        help="CPU worker threads the batch is split over (default: one per core)")


def use_device(args) -> None:
    """A command's --device, --tf32 and --workers: the backend, TF32 (only when asked;
    otherwise CuPy's default) and the number of CPU worker threads."""
    from .. import backend
    from ..parallel import threads
    backend.use(args.device, tf32=True if getattr(args, "tf32", False) else None)
    if getattr(args, "workers", None) is not None:
        threads.set_workers(args.workers)


def add_parallel_args(ap: argparse.ArgumentParser, default_procs: str = "auto") -> None:
    """--procs and --dtype, for the training commands."""
    ap.add_argument("--procs", default=default_procs, metavar="N|auto",
                    help="data-parallel processes on this host, started under mpiexec (needs "
                         "pip install -e .[mpi]); auto: one per core on the CPU when MPI is "
                         "installed (at most one per 16 images of the batch), else 1 (one "
                         f"process, worker threads); default {default_procs}")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="parameter and activation dtype (float64: for exactness checks)")


def resolve_procs(args) -> int:
    """The number of processes --procs asks for (auto: see add_parallel_args)."""
    from ..parallel import launch, launched_size
    if launched_size() > 1:                              # already one of mpiexec's processes
        if args.procs not in ("auto", "1"):
            raise ValueError("--procs starts the processes itself; under mpiexec leave it out")
        return 1
    if args.procs == "auto":
        cores = os.cpu_count() or 1
        if getattr(args, "device", "cpu") != "cpu" or cores < 2 or not launch.mpi_available():
            return 1
        return auto_procs(cores, args.batch_size)
    try:
        procs = int(args.procs)
    except ValueError:
        raise ValueError(f"--procs must be a positive integer or auto, got {args.procs!r}") from None
    if procs < 1:
        raise ValueError(f"--procs must be a positive integer or auto, got {procs}")
    return procs


def ran_as_processes(args, argv, module: str) -> bool:
    """True when the command ran as --procs N processes under mpiexec (N > 1); a failed job
    exits with its status. False: this process does the work itself."""
    code = relaunched(args, argv, module)
    if code:
        raise SystemExit(code)
    return code is not None


def auto_procs(cores: int, batch_size: int, min_share: int = 16) -> int:
    """The most processes, at most one per core, that split the batch evenly with at least
    min_share images each (smaller shares run the small models' many NumPy calls for too
    little work); 1 when none does."""
    for p in range(min(cores, batch_size // min_share), 1, -1):
        if batch_size % p == 0:
            return p
    return 1


def relaunched(args, argv, module: str):
    """Run the command as --procs N processes under mpiexec when N > 1 and return the job's exit
    status; None when this process should do the work itself."""
    procs = resolve_procs(args)
    if procs == 1:
        return None
    from ..parallel import launch
    if args.batch_size % procs:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by --procs {procs}; "
                         f"each process takes an equal share of every batch")
    argv = sys.argv[1:] if argv is None else list(argv)
    print(f"minivit: starting {procs} processes under mpiexec ({max(1, (os.cpu_count() or 1) // procs)} "
          f"core(s) each; --procs 1 runs one process)", file=sys.stderr)
    return launch.relaunch(procs, _without_procs(argv) + ["--procs", "1"], module)


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
