"""The command lines, one module each: parse the flags, build the pieces, call the library.

    module         console script       python -m                    example script
    train.py       minivit-train        python -m minivit.train      examples/train_mnist.py
    finetune.py    minivit-finetune     python -m minivit.finetune   examples/finetune.py
    evaluate.py    minivit-evaluate     python -m minivit.evaluate
    predict.py     minivit-predict      python -m minivit.predict
    embed.py       minivit-embed        python -m minivit.embed
    io.py          minivit-io           python -m minivit.io
    attention.py   minivit-attention    python -m minivit.attention  examples/attention_maps.py

flags.py holds the checks of flag values made while parsing and the rule for output paths.
Every parser is a Parser: a bad flag is one line, and --version prints minivit's version.

Each usage line names the command the way it was run (command_name). Every command that reads
a model takes it with one flag, --model PATH, in any layout minivit.io.load_pretrained reads
(add_model_arg, load_model). Every command runs through run(): a user error prints one `error:`
line, not a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import MinivitError, UserError
from ..parallel.threads import Runtime
from .flags import count

# What a user can fix: minivit's own errors (errors.MinivitError: bad values, files, writes,
# missing extras, a diverged loss) and the operating system's (a path, a permission, a full
# disk). Anything else is a bug in minivit and keeps its traceback.
USER_ERRORS = (MinivitError, OSError)
REPORT = ("this is a bug in minivit, not something you did: please report it with the "
          "traceback above and the command you ran")


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line naming the flag, the value and what it
    takes (flags.py checks the values), and a pointer to --help, instead of the whole usage;
    every command has --version."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .. import __version__
        self.add_argument("--version", action="version", version=f"minivit {__version__}")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


def run(main, argv=None):
    """Call main(argv). A user error (USER_ERRORS: errors.MinivitError for bad data, a bad file,
    a failed write, a bad value, no GPU, a diverging loss; an OSError about a path) prints one
    'error: <message>' line naming the file where there is one, and exits with status 2;
    MINIVIT_DEBUG=1 shows the traceback. Running out of memory is one line too. Any other
    exception is a bug: its traceback is shown, with a line asking to report it (status 1).
    Under mpiexec a failing process ends the whole job (parallel/mpi.py fail): the error is
    printed once, and no process is left waiting in a collective; an error the processes agreed
    on (parallel.mpi.together: flags, data, output folder) is printed once without the abort.
    Warnings print as one 'warning: <message>' line; a closed pipe (`minivit-io info X | head`)
    ends the command quietly."""
    import warnings
    warnings.formatwarning = _one_line_warning
    try:
        return main(argv)
    except BrokenPipeError:                               # the reader went away: nothing to say
        try:                                              # no second error at exit's flush
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        raise SystemExit(0)
    except USER_ERRORS as e:
        if os.environ.get("MINIVIT_DEBUG") == "1" and not _under_mpi():
            raise
        message = f"error: {describe(e)}"
        if _under_mpi() and not _shared(e):
            _fail_job(message)
        print(f"{message}\n(set MINIVIT_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(2)
    except MemoryError:
        message = ("error: out of memory; lower --batch-size, use a smaller model or image "
                   "size, or run where more memory is free")
        if _under_mpi():
            _fail_job(message)
        print(message, file=sys.stderr)
        raise SystemExit(2)
    except Exception as e:
        import traceback
        if _under_mpi() and not _shared(e):               # the others may wait in a collective
            _fail_job(f"{traceback.format_exc().rstrip()}\n{REPORT}")
        traceback.print_exc()
        print(REPORT, file=sys.stderr)
        raise SystemExit(1)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _under_mpi() -> bool:
    from ..parallel import launched_size
    return launched_size() > 1


def _shared(e: BaseException) -> bool:
    """An error every process of the job knows about (parallel.mpi.together): the others have
    exited cleanly, so this one reports it without ending the job by MPI's abort."""
    from ..parallel.mpi import is_shared
    return is_shared(e)


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
        ap.add_argument("--workers", type=count, default=None,
                        help="CPU worker threads the batch is split over (default: one per core)")


def use_device(args, world=None) -> Runtime:
    """A command's --device, --tf32 and --workers: the backend, TF32 (only when asked;
    otherwise CuPy's default), and the command's CPU runtime, returned for it to give to every
    model it builds or loads (threads.Runtime: the environment's, MINIVIT_WORKERS and
    MINIVIT_NO_MALLOPT, with --workers over it, and under a multi-process `world` each process's
    share of this host's cores, parallel.cores_per_process), applied once here: the allocator
    tuned unless MINIVIT_NO_MALLOPT=1, the main thread's BLAS threads set to its cores."""
    from .. import backend
    from ..parallel import cores_per_process
    backend.use(args.device, tf32=True if getattr(args, "tf32", False) else None)
    asked = {"workers": getattr(args, "workers", None),
             "cores": cores_per_process(world) if world is not None else None}
    return Runtime.from_env(**{k: v for k, v in asked.items() if v is not None}).apply()


def training_folder(args, world, default: str) -> str:
    """The folder a training command writes to, chosen by the root, the same on every process,
    said once: with --resume the resumed checkpoint's folder (the run goes on where it is, also
    when it went to a numbered folder); else --out (default `default`), or a numbered folder
    beside it when it holds an earlier run (flags.run_folder)."""
    from .flags import run_folder
    if args.resume is not None:
        out = os.path.dirname(args.resume) or "."
        if args.out is not None and os.path.realpath(args.out) != os.path.realpath(out) \
                and world.is_root:
            print(f"note: --resume continues the run in its folder {out}; --out {args.out} is "
                  f"not used", file=sys.stderr)
        return out
    asked = args.out if args.out is not None else default
    out = world.bcast(run_folder(asked, args.overwrite) if world.is_root else None)
    if out != asked and world.is_root:
        print(f"{asked} holds an earlier run, so this one goes to {out} (--overwrite writes "
              f"into {asked}; --resume continues the earlier run)", file=sys.stderr)
    return out


def check_resumable(path: str) -> None:
    """ValueError unless --resume names a minivit checkpoint: another layout gets the flag that
    reads it (a run starts from a pretrained model with minivit-finetune --model)."""
    from ..io.pretrained import find_source
    fmt = find_source(path).format
    if fmt != "minivit":
        name = {"google": "a Google (vit_jax) .npz", "hf": "a transformers checkpoint",
                "timm": "a timm checkpoint"}.get(fmt, f"a {fmt} file")
        raise UserError(f"--resume {path}: this is {name}, not a minivit run's checkpoint "
                        f"(last.npz); to start from it, pass it to minivit-finetune --model "
                        f"{path}; to read it, minivit-io info {path}")


def add_output_args(ap: argparse.ArgumentParser, default: str) -> None:
    """--out, --overwrite and --resume of a training command (the rule: flags.py)."""
    from .flags import add_overwrite_arg, existing_file, folder
    ap.add_argument("--out", type=folder, default=None, metavar="DIR",
                    help=f"output folder (default {default}); one holding an earlier run is "
                         f"kept: this run goes to a numbered folder beside it ({default}-2, ...)")
    add_overwrite_arg(ap, "the files of an earlier run in --out")
    ap.add_argument("--resume", type=existing_file, default=None, metavar="CHECKPOINT",
                    help="continue a run from its last.npz, in that checkpoint's folder")


def add_parallel_args(ap: argparse.ArgumentParser, default_procs: str = "auto") -> None:
    """--procs and --dtype, for the training commands (the --procs policy: parallel/launch.py)."""
    ap.add_argument("--procs", default=default_procs, metavar="N|auto",
                    help="data-parallel processes on this host, started under mpiexec (needs "
                         "pip install -e .[mpi]); auto: one per core on the CPU when MPI is "
                         "installed (at most one per 16 images of the batch), else 1 (one "
                         f"process, worker threads); default {default_procs}")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="parameter and activation dtype (float64: for exactness checks)")


def ran_as_processes(args, argv, module: str) -> bool:
    """True when the command ran as --procs N processes under mpiexec (N > 1); a failed job
    exits with its status. False: this process does the work itself."""
    from ..parallel import launch
    code = launch.relaunched(args.procs, args.batch_size, getattr(args, "device", "cpu"), argv,
                             module)
    if code:
        raise SystemExit(code)
    return code is not None


def command_name(script: str) -> str:
    """The command as it was run, for its usage line: `python -m minivit.predict` (any minivit
    module run with -m), `python examples/finetune.py` (a script that imports the command's
    entry), else the console script (minivit-predict), also when called from Python."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name.split(".")[0] == "minivit":
        return "python -m " + spec.name.removesuffix(".__main__")
    argv0 = sys.argv[0] if sys.argv else ""
    entry = getattr(main, "entry", None)
    if argv0.endswith(".py") and getattr(entry, "__module__", "").startswith("minivit.cli."):
        return "python " + argv0
    return script


def add_model_arg(ap: argparse.ArgumentParser, required: bool = True, help: str = "") -> None:
    """--model PATH: the model to read, in any layout load_pretrained reads; --checkpoint, --npz
    and --pretrained are the same flag (their names before there was one)."""
    ap.add_argument("--model", "--checkpoint", "--npz", "--pretrained", dest="model",
                    metavar="PATH", required=required,
                    help="a minivit checkpoint or Google (vit_jax) .npz, a transformers or timm "
                         "folder (config.json + model.safetensors) or a .safetensors file "
                         "(minivit.io.load_pretrained)" + help)


def load_model(path: str, gelu: str | None = None, dtype: str | None = None, *,
               runtime: Runtime, **overrides):
    """(model, format) of --model: format 'minivit', 'google', 'hf' or 'timm'. gelu and dtype
    apply to foreign files; a minivit checkpoint records its GELU (gelu is refused) and keeps
    its dtype. runtime: the command's (use_device), given to the model. overrides:
    load_pretrained's (image_size=, seed=, ...)."""
    from ..io.pretrained import find_source, load_pretrained
    fmt = find_source(path).format
    if fmt == "minivit" and gelu:
        raise UserError(f"--gelu sets the GELU of a file that does not record it (a Google "
                        f".npz) or overrides a transformers/timm model's; {path} is a minivit "
                        f"checkpoint, which records its own: leave --gelu out")
    if fmt != "minivit":
        overrides.update({k: v for k, v in (("gelu", gelu), ("dtype", dtype)) if v})
    model = load_pretrained(path, **overrides)
    model.runtime = runtime
    return model, fmt
