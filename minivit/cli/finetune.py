"""Fine-tune a pretrained ViT on an image folder (minivit-finetune, or
python examples/finetune.py).

    minivit-finetune --model ViT-Ti_16.npz --data flowers/ --image-size 224 --head-only
    minivit-finetune --model vit-base-patch16-224/ --data flowers/ --epochs 3
    minivit-finetune --model runs/mnist/best.npz --data digits/ --epochs 5

--model takes anything minivit.io.load_pretrained reads: a minivit checkpoint (it keeps its
dtype and GELU), a Google (vit_jax) .npz, a transformers or timm folder or .safetensors file
(loaded in --dtype; --gelu overrides their GELU); --checkpoint, --npz and --pretrained are the
same flag. A source whose preprocessing resizes (transformers and timm folders state a resize
and a center crop) takes photos of any size and any format Pillow reads through that resize
and crop; otherwise the images must be the model's size, or --image-size S resizes them and
resamples the position table. The head is replaced by a zero-initialized one for the folder's
classes (ViT.reset_head); --head-only freezes every other parameter (and makes the default
--lr 1e-3 instead of 1e-4). The images are normalized with a transformers or timm source's own
mean and std, otherwise with the training images' statistics; --mean/--std override either.
Augmentation (--augment): a random resized crop and flip for 3-channel photos, random shifts
of up to 2 pixels otherwise. Training is training.fit: the same progress bars, outputs and
rules as MNIST training (last.npz, best.npz, metrics.jsonl, config.json, curves.png in --out,
a numbered folder beside one that holds an earlier run; Ctrl-C saves, --resume continues); the
checkpoints carry the class names and the preprocessing for minivit-predict.
--procs N trains as N processes under mpiexec (default 1).
"""
from __future__ import annotations

import dataclasses
import json
import sys

from .. import backend, parallel
from ..training.finetune import frozen_keys, load_folder_for
from ..training.loop import TrainOptions, fit
from ..parallel.mpi import together
from ..training.loop import check_data
from . import (Parser, add_device_args, add_model_arg, add_output_args, add_parallel_args,
               check_resumable, command_name, load_model, ran_as_processes, run,
               training_folder, use_device)
from .flags import (count, existing_folder, fraction, natural, nonnegative, open_fraction,
                    positive)

OUT = "runs/finetune"                                     # the default output folder


def build_parser() -> Parser:
    ap = Parser(prog=command_name("minivit-finetune"),
                                 description="Fine-tune a pretrained ViT on an image folder "
                                             "(one sub-folder per class).")
    add_model_arg(ap)
    ap.add_argument("--data", type=existing_folder, required=True, metavar="DIR",
                    help="DIR/<class>/<image> (split by --test-fraction) or DIR/train/<class> "
                         "and DIR/test/<class>; .png/.jpg need Pillow, .npy always works")
    ap.add_argument("--image-size", type=count, default=None, metavar="S",
                    help="resize the images to S x S and resample the model's position table "
                         "to S (default: the images must already be the model's size)")
    ap.add_argument("--gelu", choices=("tanh", "erf"), default=None,
                    help="GELU of a foreign model (default: the source's; tanh for a Google "
                         ".npz, as vit_jax); a minivit checkpoint records its own")
    ap.add_argument("--head-only", action="store_true",
                    help="train only the new head (every other parameter frozen)")
    ap.add_argument("--test-fraction", type=open_fraction, default=0.2,
                    help="share of each class held out for testing (without DIR/train, DIR/test)")
    ap.add_argument("--epochs", type=count, default=10)
    ap.add_argument("--batch-size", type=count, default=64)
    ap.add_argument("--lr", type=positive, default=None,
                    help="peak learning rate (default 1e-3 with --head-only, else 1e-4)")
    ap.add_argument("--weight-decay", type=nonnegative, default=0.0)
    ap.add_argument("--warmup-epochs", type=nonnegative, default=1.0)
    ap.add_argument("--smoothing", type=fraction, default=0.1, help="label smoothing")
    ap.add_argument("--augment", choices=("auto", "crop-flip", "shift", "none"), default="auto",
                    help="training augmentation: crop-flip (a random resized crop and a random "
                         "horizontal flip, as the ViT/DeiT fine-tuning recipes), shift (random "
                         "shifts of up to 2 pixels, as for MNIST) or none; auto (default): "
                         "crop-flip for 3-channel photos, shift otherwise")
    ap.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                    help="the same as --augment none")
    ap.add_argument("--mean", type=float, nargs="+", default=None, metavar="M",
                    help="normalization mean of pixel/255, one value or one per channel "
                         "(default: a transformers or timm source's, else the training images'; "
                         "vit_jax models were pretrained with --mean 0.5 --std 0.5)")
    ap.add_argument("--std", type=positive, nargs="+", default=None, metavar="S",
                    help="see --mean")
    ap.add_argument("--seed", type=natural, default=0)
    add_device_args(ap)
    add_parallel_args(ap, default_procs="1")
    add_output_args(ap, OUT)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def augmentation(choice: str, model) -> str | bool:
    """--augment as TrainOptions.augment: auto is crop-flip for 3-channel models, else shift."""
    if choice == "auto":
        return "crop-flip" if model.config.in_channels == 3 else "shift"
    return False if choice == "none" else choice


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if ran_as_processes(args, argv, "minivit.cli.finetune"):   # --procs N: the job is done
        return {}
    job = parallel.world()
    runtime = use_device(args, job)
    world = parallel.training_world(args.device)
    model, fmt = together(job, lambda: load_model(args.model, args.gelu, args.dtype,
                                                  runtime=runtime, image_size=args.image_size,
                                                  seed=args.seed))
    mean, std, pre = args.mean, args.std, model.preprocessing
    if fmt in ("hf", "timm") and pre is not None:        # the source's own normalization
        mean = pre.mean if mean is None else mean
        std = pre.std if std is None else std
    data = together(job, lambda: load_folder_for(model, args.data, args.image_size,
                                                 args.test_fraction, args.seed, mean, std))
    names = data.preprocessing.class_names
    K = len(names)
    model.reset_head(K)                                             # zero-initialized
    frozen = sorted(frozen_keys(model, head_only=True)) if args.head_only else []
    lr = args.lr if args.lr is not None else (1e-3 if args.head_only else 1e-4)
    opts = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=lr,
                        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                        smoothing=args.smoothing, augment=augmentation(args.augment, model), seed=args.seed,
                        frozen=frozen)
    cfg = model.config
    trainable = sum(v.size for k, v in model.params.items() if k not in frozen)
    if world.is_root:
        print(f"minivit fine-tune: {args.model} -> {K} classes "
              f"({', '.join(names[:8])}{', ...' if K > 8 else ''}); ViT patch "
              f"{cfg.patch_size}, dim {cfg.dim}, depth {cfg.depth}, {cfg.image_size}x"
              f"{cfg.image_size}x{cfg.in_channels}; {trainable:,} of {model.num_params():,} "
              f"parameters trainable; {len(data.x_train)} training / {len(data.x_test)} test "
              f"images on {backend.name()}"
              + (f", {world.size} processes" if world.size > 1 else ""))
    run_config = {"model": cfg.to_dict(), "train": dataclasses.asdict(opts),
                  "source": {"model": args.model, "format": fmt},
                  "data": {"folder": args.data, **data.preprocessing.to_dict()},
                  "argv": sys.argv[1:] if argv is None else list(argv)}
    together(job, lambda: check_data(model, data, opts, world))   # labels, batch size
    if args.resume:
        together(job, lambda: check_resumable(args.resume))
    out = together(job, lambda: training_folder(args, job, OUT))
    summary = fit(model, data, opts, out, resume=args.resume, run_config=run_config,
                  quiet=args.quiet, world=world)
    summary.update(device=args.device, classes=K, head_only=args.head_only)
    if world.is_root:
        print(json.dumps(summary))
    return summary


def entry() -> None:
    """The minivit-finetune console script."""
    run(main)


if __name__ == "__main__":
    entry()
