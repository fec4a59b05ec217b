"""Attention maps of a model trained on MNIST, on MNIST test images, as a PNG grid
(minivit-attention, or python examples/attention_maps.py).

    minivit-attention --model runs/mnist/best.npz --out attention.png
    minivit-attention --quick            # a tiny random model, synthetic digits, no download

--model takes anything minivit.io.load_pretrained reads (--checkpoint, its old name, is the same
flag); the model must take 28x28x1 images. --num-images (6) test images come from --data (the
MNIST cache by default; --quick alone draws 3 synthetic ones). The grid goes to --out, one row
per image: the input, then each layer's CLS-token attention (mean over heads, the CLS query row
over the patches, upsampled to the image) and the attention rollout over all layers (Abnar &
Zuidema 2020; minivit/analysis/attention.py). Every map is min-max scaled for display. Without
matplotlib the numbers are printed and no PNG is written.
"""
from __future__ import annotations


import numpy as np

from .. import backend
from ..analysis.attention import attention_maps
from ..analysis.render import print_numbers, render
from ..config import ViTConfig
from ..data.batches import normalize
from ..data.mnist import PREPROCESSING
from ..model import ViT
from . import Parser, add_device_args, add_model_arg, command_name, load_model, run, use_device
from .flags import add_overwrite_arg, count, folder, new_output


def build_parser() -> Parser:
    ap = Parser(prog=command_name("minivit-attention"),
                                 description="Draw per-layer CLS attention and attention rollout "
                                             "for a few MNIST test images.")
    add_model_arg(ap, required=False, help="; trained on MNIST (28x28x1)")
    ap.add_argument("--data", type=folder, default=None,
                    help="folder with the MNIST files (default: cache)")
    ap.add_argument("--num-images", type=count, default=6)
    ap.add_argument("--out", default="attention.png", help="the PNG to write (an existing one "
                    "is kept unless --overwrite)")
    add_overwrite_arg(ap, "--out")
    add_device_args(ap, workers=False)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: a tiny random model (unless --model) and at most 3 "
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
    if args.model:
        model, _ = load_model(args.model)
    elif args.quick:
        model = ViT(ViTConfig(image_size=28, patch_size=7, dim=16, depth=2, heads=2), seed=0,
                    preprocessing=PREPROCESSING)
    else:
        raise ValueError("pass --model PATH (or its alias --checkpoint PATH): a model trained "
                         "on MNIST, e.g. runs/mnist/best.npz; or --quick for a tiny random model")
    pre = model.preprocessing or PREPROCESSING            # checkpoints without one: MNIST's
    cfg = model.config
    if (cfg.image_size, cfg.in_channels) != (28, 1):
        raise ValueError(f"the model takes {cfg.image_size}x{cfg.image_size}x{cfg.in_channels} "
                         f"images, MNIST is 28x28x1; use a model trained on MNIST")
    n = min(args.num_images, 3) if args.quick else args.num_images
    if args.quick and not args.data:
        x, y = synthetic_digits(n)
    else:
        from ..data.mnist import load_mnist
        _, _, x_test, y_test = load_mnist(args.data)
        x, y = x_test[:n, None], y_test[:n]                           # (n, 1, 28, 28)
    return model, x, np.asarray(y), pre.mean, pre.std, pre.class_names


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    new_output(args.out, args.overwrite)
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
