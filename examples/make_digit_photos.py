"""A small photo folder to try fine-tuning on: MNIST digits as dark-on-light RGB photos of
assorted sizes and formats, the way scanned handwriting looks rather than MNIST's light-on-dark
28 x 28 arrays. A model trained on MNIST has never seen them; fine-tuning it on a few hundred
teaches it (docs/training.md, "Fine-tuning on photos: a recipe").

    python examples/make_digit_photos.py digit-photos              # 30 + 20 per class
    python examples/make_digit_photos.py digit-photos --train-per-class 100 --data ~/mnist

Writes OUT/train/<digit>/*.png|jpg from MNIST's training images and OUT/test/<digit>/* from its
test images (the folder layout finetune and evaluate read), seeded. Needs Pillow
(pip install -e .[images]); MNIST is read from --data (or $MINIVIT_DATA, or downloaded).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from minivit.cli import Parser, run
from minivit.cli.flags import count, folder, natural, new_output
from minivit.data.mnist import load_mnist
from minivit.errors import MissingExtra


def photo(digit: np.ndarray, rng: np.random.Generator, Image):
    """One MNIST digit (28, 28) uint8 as an RGB photo: inverted (dark ink on light paper), a
    paper tint, a random size from 24 to 64 pixels a side."""
    ink = 255 - digit.astype(np.float64)                              # dark strokes, light paper
    tint = rng.uniform(0.8, 1.0, 3) * 255                             # the paper's colour
    rgb = np.clip(ink[..., None] / 255 * tint, 0, 255).astype(np.uint8)   # (28, 28, 3)
    side = int(rng.integers(24, 65))
    return Image.fromarray(rgb).resize((side, side), Image.BILINEAR)


def write_split(out: str, images: np.ndarray, labels: np.ndarray, per_class: int,
                rng: np.random.Generator, Image) -> int:
    n = 0
    for k in range(10):
        os.makedirs(os.path.join(out, str(k)), exist_ok=True)
        for i, idx in enumerate(np.flatnonzero(labels == k)[:per_class]):
            ext = "png" if rng.uniform() < 0.5 else "jpg"
            photo(images[idx], rng, Image).save(os.path.join(out, str(k), f"{i:04d}.{ext}"))
            n += 1
    return n


def main(argv=None) -> None:
    ap = Parser(prog="python examples/make_digit_photos.py",
                description="Write MNIST digits as a small folder of dark-on-light photos.")
    ap.add_argument("out", type=folder, help="the folder to write (must not exist yet)")
    ap.add_argument("--train-per-class", type=count, default=30)
    ap.add_argument("--test-per-class", type=count, default=20)
    ap.add_argument("--data", type=folder, default=None,
                    help="folder with the MNIST files (default $MINIVIT_DATA or the cache)")
    ap.add_argument("--seed", type=natural, default=0)
    args = ap.parse_args(argv)
    new_output(args.out, overwrite=False, flag="OUT")
    try:
        from PIL import Image
    except ImportError as e:
        raise MissingExtra("writing PNG and JPEG photos needs Pillow: pip install -e .[images]") \
            from e
    x_train, y_train, x_test, y_test = load_mnist(args.data)
    rng = np.random.default_rng(args.seed)
    n = write_split(os.path.join(args.out, "train"), x_train, y_train, args.train_per_class, rng,
                    Image)
    m = write_split(os.path.join(args.out, "test"), x_test, y_test, args.test_per_class, rng,
                    Image)
    print(f"wrote {n} training and {m} test photos in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
