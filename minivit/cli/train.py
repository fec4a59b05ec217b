"""Train a ViT on MNIST (minivit-train, python -m minivit.train or examples/train_mnist.py).

    minivit-train                          # the default recipe (about 98.5% or better)
    minivit-train --preset best            # the longer recipe (about 99%)
    minivit-train --model wide --epochs 5  # another size (training/recipes.py), fewer epochs
    minivit-train --procs 2                # 2 data-parallel processes on this host
    mpiexec -n 4 python -m minivit.train   # 4 processes, on as many hosts as MPI is given
    minivit-train --resume runs/mnist/last.npz

By default (--procs auto) a CPU run on a machine with more than one core starts one process per
core under mpiexec when MPI is installed (pip install -e .[mpi]): processes outrun threads here
(benchmarks/README.md); otherwise one process splits each batch over worker threads
(the policy: parallel/launch.py).
"""
from __future__ import annotations

import dataclasses
import json
import sys

from .. import backend, parallel
from ..data.mnist import mnist_dataset
from ..model import ViT
from ..parallel.mpi import together
from ..training.loop import TrainOptions, check_data, fit
from ..training.recipes import MODELS, PRESETS, mnist_config
from . import (Parser, add_device_args, add_output_args, add_parallel_args, check_resumable,
               command_name, ran_as_processes, run, training_folder, use_device)
from .flags import count, folder, fraction, natural, nonnegative, positive

OUT = "runs/mnist"                                        # the default output folder


def build_parser() -> Parser:
    d = TrainOptions()
    ap = Parser(prog=command_name("minivit-train"),
                                 description="Train a ViT on MNIST with minivit.")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default",
                    help="a tested recipe (default: ~98.5%% in minutes; best: 99%% in under 5 "
                         "minutes on 2 cores; long: the most in about 15 minutes)")
    ap.add_argument("--model", choices=sorted(MODELS),
                    help="model size (overrides the preset): " + ", ".join(
                        f"{k} ({v})" for k, v in MODELS.items()) + " of config.MODELS")
    ap.add_argument("--epochs", type=count, help="epochs (overrides the preset)")
    ap.add_argument("--stop-after-epochs", type=count, default=None, metavar="E",
                    help="save and stop after E epochs (the schedule stays that of --epochs); "
                         "continue later with --resume")
    ap.add_argument("--batch-size", type=count, default=d.batch_size)
    ap.add_argument("--optimizer", choices=("adamw", "sgd"), default=d.optimizer)
    ap.add_argument("--lr", type=positive, default=None,
                    help=f"peak learning rate (default: the preset's, else {d.lr})")
    ap.add_argument("--min-lr", type=nonnegative, default=d.min_lr)
    ap.add_argument("--weight-decay", type=nonnegative, default=d.weight_decay)
    ap.add_argument("--warmup-epochs", type=nonnegative, default=None,
                    help=f"linear warmup (default: the preset's, else {d.warmup_epochs})")
    ap.add_argument("--smoothing", type=fraction, default=d.smoothing, help="label smoothing")
    ap.add_argument("--clip", type=nonnegative, default=d.clip,
                    help="gradient-norm clip (0: off)")
    ap.add_argument("--no-augment", dest="augment", action="store_false",
                    help="turn off the random shifts")
    ap.add_argument("--dropout", type=fraction, default=0.0)
    ap.add_argument("--drop-path", type=fraction, default=0.0)
    ap.add_argument("--seed", type=natural, default=d.seed)
    add_device_args(ap)
    add_parallel_args(ap)
    ap.add_argument("--data", type=folder, default=None, help="folder holding (or to receive) the MNIST files; "
                    "default $MINIVIT_DATA or ~/.cache/minivit/mnist")
    add_output_args(ap, OUT)
    ap.add_argument("--limit-train", type=count, default=None,
                    help="use only the first N training images")
    ap.add_argument("--limit-test", type=count, default=None,
                    help="use only the first N test images")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if ran_as_processes(args, argv, "minivit.train"):   # --procs N: the job is done
        return {}
    job = parallel.world()
    runtime = use_device(args, job)
    preset = PRESETS[args.preset]
    cfg = mnist_config(args.model or preset["model"], dropout=args.dropout,
                       drop_path=args.drop_path, dtype=args.dtype)
    d = TrainOptions()
    lr = args.lr if args.lr is not None else preset.get("lr", d.lr)
    warmup = args.warmup_epochs if args.warmup_epochs is not None else \
        preset.get("warmup_epochs", d.warmup_epochs)
    opts = TrainOptions(epochs=args.epochs if args.epochs is not None else preset["epochs"],
                        batch_size=args.batch_size,
                        optimizer=args.optimizer, lr=lr, min_lr=args.min_lr,
                        weight_decay=args.weight_decay, warmup_epochs=warmup,
                        smoothing=args.smoothing, clip=args.clip, augment=args.augment,
                        seed=args.seed, stop_after_epochs=args.stop_after_epochs)
    world = parallel.training_world(args.device)
    if args.resume:
        together(job, lambda: check_resumable(args.resume))
    out = together(job, lambda: training_folder(args, job, OUT))
    data = together(job, lambda: mnist_dataset(args.data, args.limit_train, args.limit_test),
                    root_first=True)                      # a download happens once
    model = ViT(cfg, seed=args.seed, runtime=runtime)
    if world.is_root:
        procs = f"{world.size} processes x " if world.size > 1 else ""
        print(f"minivit: ViT patch {cfg.patch_size}, dim {cfg.dim}, depth {cfg.depth}, heads "
              f"{cfg.heads}, {model.num_params():,} parameters, on {backend.name()} ({procs}"
              f"{runtime.worker_count() if backend.name() == 'numpy' else 1} worker(s)); "
              f"{len(data.x_train)} training / {len(data.x_test)} test images")
    run_config = {"model": cfg.to_dict(), "train": dataclasses.asdict(opts),
                  "argv": sys.argv[1:] if argv is None else list(argv)}
    together(job, lambda: check_data(model, data, opts, world))   # labels, batch size
    summary = fit(model, data, opts, out, resume=args.resume, run_config=run_config,
                  quiet=args.quiet, world=world)
    summary["device"] = args.device
    if world.is_root:
        print(json.dumps(summary))
    return summary


def entry() -> None:
    """The minivit-train console script."""
    run(main)


if __name__ == "__main__":
    entry()
