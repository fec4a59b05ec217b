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

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, RuntimeError, ArithmeticError)


def run(main, argv=None):
    """Call main(argv). A ValueError/TypeError/FileNotFoundError/RuntimeError/ArithmeticError
    (bad data, bad checkpoint, bad flag, no GPU, a diverging loss) prints 'error: <message>' and
    exits with status 2; MINIVIT_DEBUG=1 shows the full traceback instead."""
    try:
        return main(argv)
    except USER_ERRORS as e:
        if os.environ.get("MINIVIT_DEBUG") == "1":
            raise
        print(f"error: {e}\n(set MINIVIT_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(2)


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
