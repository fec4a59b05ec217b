"""Fine-tune a pretrained ViT on an image folder (examples/finetune.py calls main).

    python examples/finetune.py --npz ViT-Ti_16.npz --data flowers/ --image-size 224 --head-only
    python examples/finetune.py --checkpoint runs/mnist/best.npz --data digits/ --epochs 5

The source is a Google (vit_jax) .npz or a minivit checkpoint. Its head is replaced by a
zero-initialized one for the folder's classes (finetune.replace_head); --head-only freezes
every other parameter. Training is train.fit: the same progress bars and outputs as MNIST
training (last.npz, best.npz, metrics.jsonl, config.json, curves.png in --out); the
checkpoints carry the class names and the normalization for `python -m minivit.predict`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from . import backend
from .finetune import frozen_keys, replace_head, set_image_size
from .imagefolder import load_image_folder
from .model import ViT
from .train import Dataset, TrainOptions, fit, use_device


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python examples/finetune.py",
                                 description="Fine-tune a pretrained ViT on an image folder "
                                             "(one sub-folder per class).")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--npz", metavar="FILE", help="a Google (vit_jax) ViT .npz")
    src.add_argument("--checkpoint", metavar="FILE", help="a minivit checkpoint (.npz)")
    ap.add_argument("--data", required=True, metavar="DIR",
                    help="DIR/<class>/<image> (split by --test-fraction) or DIR/train/<class> "
                         "and DIR/test/<class>; .png/.jpg need Pillow, .npy always works")
    ap.add_argument("--image-size", type=int, default=None, metavar="S",
                    help="resize the images to S x S and resample the model's position table "
                         "to S (default: the images must already be the model's size)")
    ap.add_argument("--gelu", choices=("tanh", "erf"), default=None,
                    help="GELU of a --npz model (default tanh, as vit_jax); a checkpoint "
                         "records its own")
    ap.add_argument("--head-only", action="store_true",
                    help="train only the new head (every other parameter frozen)")
    ap.add_argument("--test-fraction", type=float, default=0.2,
                    help="share of each class held out for testing (without DIR/train, DIR/test)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None,
                    help="peak learning rate (default 1e-3 with --head-only, else 1e-4)")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    ap.add_argument("--no-augment", dest="augment", action="store_false",
                    help="turn off the random shifts of up to 2 pixels")
    ap.add_argument("--mean", type=float, nargs="+", default=None,
                    help="normalization mean of pixel/255, one value or one per channel "
                         "(default: the training images'; vit_jax models were pretrained with "
                         "--mean 0.5 --std 0.5)")
    ap.add_argument("--std", type=float, nargs="+", default=None, help="see --mean")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--tf32", action="store_true", help="GPU: TF32 tensor-core matmuls")
    ap.add_argument("--workers", type=int, default=None,
                    help="CPU worker threads the batch is split over (default: one per core)")
    ap.add_argument("--out", default="runs/finetune", help="output folder")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def load_source(args) -> ViT:
    """The pretrained model from --npz or --checkpoint, at --image-size when given."""
    from .checkpoint import load_checkpoint
    from .io import load_google_npz

    if args.npz:
        overrides = {"gelu": args.gelu} if args.gelu else {}
        return load_google_npz(args.npz, image_size=args.image_size, seed=args.seed, **overrides)
    if args.gelu:
        raise ValueError("--gelu applies to --npz only: a minivit checkpoint records its GELU")
    model = load_checkpoint(args.checkpoint)["model"]
    if args.image_size is not None and args.image_size != model.config.image_size:
        set_image_size(model, args.image_size)
    return model


def load_data(args, model: ViT) -> Dataset:
    """The image folder at the model's channels; checks the size and applies --mean/--std."""
    cfg = model.config
    data = load_image_folder(args.data, image_size=args.image_size, channels=cfg.in_channels,
                             test_fraction=args.test_fraction, seed=args.seed)
    S = data.x_train.shape[-1]
    if S != cfg.image_size:
        raise ValueError(f"the images in {args.data} are {S}x{S} but the model takes "
                         f"{cfg.image_size}x{cfg.image_size}; pass --image-size {cfg.image_size} "
                         f"to resize the images, or --image-size {S} to resample the model's "
                         f"position table to them")
    for name in ("mean", "std"):
        v = getattr(args, name)
        if v is not None:
            if len(v) not in (1, cfg.in_channels):
                raise ValueError(f"--{name} has {len(v)} values for {cfg.in_channels} "
                                 f"channel(s); give one value or one per channel")
            setattr(data, name, [float(a) for a in v])
    return data


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    use_device(args)
    model = load_source(args)
    data = load_data(args, model)
    K = len(data.class_names)
    replace_head(model, K)                                          # zero-initialized
    frozen = sorted(frozen_keys(model, head_only=True)) if args.head_only else []
    lr = args.lr if args.lr is not None else (1e-3 if args.head_only else 1e-4)
    opts = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=lr,
                        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                        smoothing=args.smoothing, augment=args.augment, seed=args.seed,
                        frozen=frozen)
    cfg = model.config
    trainable = sum(v.size for k, v in model.params.items() if k not in frozen)
    print(f"minivit fine-tune: {args.npz or args.checkpoint} -> {K} classes "
          f"({', '.join(data.class_names[:8])}{', ...' if K > 8 else ''}); ViT patch "
          f"{cfg.patch_size}, dim {cfg.dim}, depth {cfg.depth}, {cfg.image_size}x"
          f"{cfg.image_size}x{cfg.in_channels}; {trainable:,} of {model.num_params():,} "
          f"parameters trainable; {len(data.x_train)} training / {len(data.x_test)} test images "
          f"on {backend.name()}")
    run_config = {"model": cfg.to_dict(), "train": dataclasses.asdict(opts),
                  "source": {"npz": args.npz, "checkpoint": args.checkpoint},
                  "data": {"folder": args.data, "class_names": data.class_names,
                           "mean": data.mean, "std": data.std},
                  "argv": sys.argv[1:] if argv is None else list(argv)}
    summary = fit(model, data, opts, args.out, run_config=run_config, quiet=args.quiet)
    summary.update(device=args.device, classes=K, head_only=args.head_only)
    print(json.dumps(summary))
    return summary
