"""Attention maps of a trained minivit on MNIST test images, as a PNG grid (the command behind
examples/attention_maps.py and minivit-attention).

    python examples/attention_maps.py --checkpoint runs/mnist/best.npz --out attention.png
    python examples/attention_maps.py --quick            # tiny random model, synthetic digits

One row per image: the input, then each layer's CLS-token attention (mean over heads, the CLS
query row over the patches, upsampled to the image) and the attention rollout over all layers
(Abnar & Zuidema 2020; minivit/analysis/attention.py). Every map is min-max scaled for
display.
Without matplotlib the numbers are printed and no PNG is written.
"""
from __future__ import annotations

import argparse

import numpy as np

from .. import backend
from ..analysis.attention import attention_maps
from ..analysis.render import print_numbers, render
from ..config import ViTConfig
from ..data.batches import normalize
from ..data.mnist import PREPROCESSING
from ..io.checkpoint import load_checkpoint
from ..model import ViT
from . import add_device_args, run, use_device


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python examples/attention_maps.py",
                                 description="Draw per-layer CLS attention and attention rollout "
                                             "for a few MNIST test images.")
    ap.add_argument("--checkpoint", default=None, help="a trained minivit checkpoint (.npz)")
    ap.add_argument("--data", default=None, help="folder with the MNIST files (default: cache)")
    ap.add_argument("--num-images", type=int, default=6)
    ap.add_argument("--out", default="attention.png", help="the PNG to write")
    add_device_args(ap, workers=False)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: a tiny random model (unless --checkpoint) and at most 3 "
                         "synthetic images (unless --data)")
    return ap


def synthetic_digits(n: int, seed: int = 0) -> tuple:
    """n uint8 28x28 images with a bright bar in row band k for class k, and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, 1, 28, 28)).astype(np.uint8)          # (n, 1, 28, 28)
    for i, k in enumerate(y):
        x[i, 0, 2 + 2 * k:4 + 2 * k, 4:24] = 255
    return x, y


def load(args) -> tuple:
    """(model, uint8 images (M, C, S, S), labels (M,), mean, std, class names or None)."""
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint)["model"]
    elif args.quick:
        model = ViT(ViTConfig(image_size=28, patch_size=7, dim=16, depth=2, heads=2), seed=0,
                    preprocessing=PREPROCESSING)
    else:
        raise ValueError("pass --checkpoint FILE (a trained minivit checkpoint, e.g. "
                         "runs/mnist/best.npz), or --quick for a tiny random model")
    pre = model.preprocessing or PREPROCESSING            # checkpoints without one: MNIST's
    cfg = model.config
    if (cfg.image_size, cfg.in_channels) != (28, 1):
        raise ValueError(f"the model takes {cfg.image_size}x{cfg.image_size}x{cfg.in_channels} "
                         f"images, MNIST is 28x28x1; use a checkpoint trained on MNIST")
    n = min(args.num_images, 3) if args.quick else args.num_images
    if n < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    if args.quick and not args.data:
        x, y = synthetic_digits(n)
    else:
        from ..data.mnist import load_mnist
        _, _, x_test, y_test = load_mnist(args.data)
        x, y = x_test[:n, None], y_test[:n]                           # (n, 1, 28, 28)
    return model, x, np.asarray(y), pre.mean, pre.std, pre.class_names


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    use_device(args)
    model, x, y, mean, std, names = load(args)
    res = attention_maps(model, normalize(backend.asarray(x), model.config.dtype, mean, std))
    print_numbers(res, y, names)
    wrote = render(x, y, res, args.out, names)
    if wrote:
        print(f"wrote {args.out}")
    return {**res, "labels": y, "out": args.out if wrote else None}


def entry() -> None:
    """The minivit-attention console script."""
    run(main)


if __name__ == "__main__":
    entry()
