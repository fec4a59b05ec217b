"""Classify image files with a trained model and print the top-k classes.

    python -m minivit.predict --checkpoint runs/finetune/best.npz photo.jpg digit.npy
    python -m minivit.predict --checkpoint runs/mnist/best.npz --resize --top-k 3 scan.png
    python -m minivit.predict --npz ViT-B_16.npz --resize cat.jpg        # class indices only

Images: PNG/JPEG (needs Pillow: pip install -e .[images]) or .npy (see minivit.imagefolder).
They are converted to the model's channels (gray repeated to RGB, or RGB to luma; a note
says so) and must be the model's size unless --resize (bilinear). Normalization: the
checkpoint's mean/std (saved by the trainer), else MNIST's; for --npz, mean = std = 0.5
(vit_jax's [-1, 1] inputs). --mean/--std override either.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from . import backend
from .data import MNIST_MEAN, MNIST_STD
from .evaluate import logits_of, softmax
from .imagefolder import ImageFolderError, convert_channels, read_image

GOOGLE_MEAN = GOOGLE_STD = 0.5      # vit_jax scales pixels to [-1, 1]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m minivit.predict",
                                 description="Print the top-k classes of image files.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="FILE", help="a minivit checkpoint (.npz)")
    src.add_argument("--npz", metavar="FILE", help="a Google (vit_jax) ViT .npz")
    ap.add_argument("--gelu", choices=("tanh", "erf"), default=None,
                    help="GELU of a --npz model (default tanh)")
    ap.add_argument("--top-k", type=int, default=5, help="classes to show per image")
    ap.add_argument("--resize", action="store_true",
                    help="resize images to the model's size (bilinear) instead of failing")
    ap.add_argument("--mean", type=float, nargs="+", default=None,
                    help="override the normalization mean of pixel/255 (one or per channel)")
    ap.add_argument("--std", type=float, nargs="+", default=None, help="see --mean")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("images", nargs="+", metavar="IMAGE", help=".png, .jpg, .jpeg or .npy files")
    return ap


def load_model(args) -> tuple:
    """(model, class names or None, mean, std) from --checkpoint or --npz."""
    if args.npz:
        from .io import load_google_npz
        model = load_google_npz(args.npz, **({"gelu": args.gelu} if args.gelu else {}))
        names, mean, std = None, GOOGLE_MEAN, GOOGLE_STD
    else:
        if args.gelu:
            raise ValueError("--gelu applies to --npz only: a minivit checkpoint records its GELU")
        from .checkpoint import load_checkpoint
        meta = load_checkpoint(args.checkpoint)
        model, extra = meta["model"], meta.get("extra") or {}
        names = extra.get("class_names")
        mean = extra["mean"] if extra.get("mean") is not None else MNIST_MEAN
        std = extra["std"] if extra.get("std") is not None else MNIST_STD
    K = model.config.num_classes
    if names is not None and len(names) != K:
        print(f"note: the checkpoint names {len(names)} classes but the model has {K} outputs; "
              f"showing class indices", file=sys.stderr)
        names = None
    mean = args.mean if args.mean is not None else mean
    std = args.std if args.std is not None else std
    return model, names, mean, std


def load_images(paths: list, cfg, resize: bool) -> np.ndarray:
    """uint8 (M, C, S, S) at the model's channels and size; notes channel conversions on stderr;
    a clear error for an unreadable file or a wrong size (suggesting --resize)."""
    S, C = cfg.image_size, cfg.in_channels
    out = []
    for path in paths:
        img = read_image(path, S if resize else None)                 # (c, h, w)
        if img.shape[1:] != (S, S):
            raise ImageFolderError(f"{path} is {img.shape[1]}x{img.shape[2]} but the model takes "
                                   f"{S}x{S} images; pass --resize to resize it (bilinear)")
        if img.shape[0] != C:
            kind = {1: "grayscale", 3: "RGB"}
            print(f"note: {path} is {kind[img.shape[0]]}; converted to {kind[C]} for the "
                  f"{C}-channel model", file=sys.stderr)
            img = convert_channels(img, C)
        out.append(img)
    return np.stack(out)                                              # (M, C, S, S)


def predict_probs(model, images: np.ndarray, mean, std, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (M, K) of uint8 images (M, C, S, S), in eval mode."""
    return softmax(logits_of(model, images, batch_size, mean, std))


def format_result(path: str, top: list) -> str:
    """'path' then one line per class: rank, name, probability."""
    w = max(len(t["class"]) for t in top)
    return "\n".join([path] + [f"  {r + 1}. {t['class']:<{w}}  {t['prob']:.4f}"
                               for r, t in enumerate(top)])


def main(argv=None) -> list:
    """Print and return, per image, {'file', 'top': [{'index', 'class', 'prob'}, ...]}."""
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    backend.use(args.device)
    model, names, mean, std = load_model(args)
    images = load_images(args.images, model.config, args.resize)
    probs = predict_probs(model, images, mean, std, args.batch_size)  # (M, K)
    k = min(args.top_k, probs.shape[1])
    results = []
    for path, p in zip(args.images, probs):
        order = np.argsort(-p, kind="stable")[:k]
        top = [{"index": int(i), "class": str(names[i]) if names else f"class {i}",
                "prob": float(p[i])} for i in order]
        results.append({"file": os.fspath(path), "top": top})
        print(format_result(path, top))
    return results


if __name__ == "__main__":
    from minivit.cli import run
    run(main)
