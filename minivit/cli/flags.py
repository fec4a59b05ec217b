"""Flag values checked while the command line is parsed, before anything is created or
downloaded, and the rule for output paths.

    ap.add_argument("--epochs", type=count)            # an integer >= 1
    ap.add_argument("--lr", type=positive)             # a finite number > 0
    ap.add_argument("--smoothing", type=fraction)      # a number in [0, 1)
    ap.add_argument("--data", type=folder)             # a folder, or a path that does not exist

A bad value ends the command at parsing with argparse's usage line and one line naming the flag,
the value and what it takes (exit status 2), e.g.

    minivit-train: error: argument --epochs: takes an integer >= 1, got '0'

Outputs never replace what a user had (README: "What minivit promises about your files"):
  * a training run (train, finetune) whose --out folder is not empty, without --resume, goes to
    the first free numbered folder beside it (runs/mnist-2, runs/mnist-3, ...) and says so in
    one line; --overwrite writes into the folder as asked (each of the earlier run's files is
    replaced, atomically, when this run writes its own);
  * every other output (attention's PNG, io convert and export) that exists already is refused
    with an error naming --overwrite.
"""
from __future__ import annotations

import argparse
import math
import os

from ..errors import UserError


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"takes {what}, got {text!r}")
    return value


def _checked(kind: type, what: str, ok):
    def parse(text: str):
        value = _number(text, kind, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"takes {what}, got {text!r}")
        return value
    parse.__name__ = what                                 # argparse's fallback name for it
    return parse


count = _checked(int, "an integer >= 1", lambda v: v >= 1)
natural = _checked(int, "an integer >= 0", lambda v: v >= 0)
positive = _checked(float, "a number > 0", lambda v: v > 0)
nonnegative = _checked(float, "a number >= 0", lambda v: v >= 0)
fraction = _checked(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
open_fraction = _checked(float, "a number in (0, 1)", lambda v: 0 < v < 1)


def existing_file(text: str) -> str:
    """A path to an existing file (a checkpoint to resume from, an image)."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"takes an existing file, got {text!r}: no such file")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"takes a file, got {text!r}: a folder")
    return text


def existing_folder(text: str) -> str:
    """A path to an existing folder (an image folder to train on)."""
    if not os.path.isdir(text):
        why = "a file" if os.path.exists(text) else "no such folder"
        raise argparse.ArgumentTypeError(f"takes an existing folder, got {text!r}: {why}")
    return text


def folder(text: str) -> str:
    """A folder, or a path where one can be made (an output folder, MNIST's download folder)."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"takes a folder, got {text!r}: a file; give a folder "
                                         f"path")
    return text


def add_overwrite_arg(ap: argparse.ArgumentParser, what: str) -> None:
    ap.add_argument("--overwrite", action="store_true",
                    help=f"replace {what} if it exists (default: never replaced)")


def run_folder(out: str, overwrite: bool = False) -> str:
    """The folder a new training run writes to: `out` itself when it is new or empty, or with
    overwrite; otherwise the first free numbered folder beside it (out-2, ...). Only looks:
    nothing is created here. (A resumed run stays in its checkpoint's folder:
    cli.training_folder.)"""
    if overwrite or not os.path.isdir(out) or not os.listdir(out):
        return out
    base = out.rstrip("/\\") or out
    n = 2
    while os.path.exists(f"{base}-{n}"):
        n += 1
    return f"{base}-{n}"


def new_output(path: str, overwrite: bool, flag: str = "--out") -> str:
    """An output path that is refused when it exists already, unless overwrite (ValueError
    naming the path and --overwrite)."""
    if os.path.lexists(path) and not overwrite:
        kind = "folder" if os.path.isdir(path) else "file"
        raise UserError(f"{flag} {path} exists (a {kind}); minivit does not replace it: choose "
                        f"another path, or pass --overwrite to replace it")
    return path
