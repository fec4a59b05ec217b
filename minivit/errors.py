"""The errors minivit raises for what a user can fix, apart from the bugs it may have.

    MinivitError          the base: the message names the problem and the fix
      UserError           a value that cannot work: a flag, a config field, an input array, a
                          label, a data set (also a ValueError)
      UserTypeError       a value of the wrong kind: an integer image, a list for an array
                          (also a TypeError)
      Unavailable         something the run needs is not there: CuPy, a GPU, mpi4py, NCCL
                          (also a RuntimeError)
        MissingExtra      an optional package: Pillow, safetensors (also an ImportError)
      Diverged            training diverged: the loss became NaN or inf (also a
                          FloatingPointError)
      files.FileFormatError, files.WriteError    a file that cannot be read / written

Each is also the built-in error it refines, so `except ValueError` keeps catching UserError.
The commands (cli.run) print a MinivitError, and an OSError about a user's path, as one
`error:` line; any other exception is a bug in minivit and keeps its traceback.
"""
from __future__ import annotations


class MinivitError(Exception):
    """An error the user can fix; the message says how."""


class UserError(MinivitError, ValueError):
    """A value that cannot work (a flag, a config field, an input, labels, a data set)."""


class UserTypeError(MinivitError, TypeError):
    """A value of the wrong kind (an integer image, a NumPy array for a CuPy model)."""


class Unavailable(MinivitError, RuntimeError):
    """Something the run needs is missing: an optional package, a GPU, MPI or NCCL."""


class MissingExtra(Unavailable, ImportError):
    """An optional package the run needs is not installed (Pillow, safetensors, ...); the
    message names the extra that brings it."""


class Diverged(MinivitError, FloatingPointError):
    """Training diverged: the loss became NaN or inf."""
