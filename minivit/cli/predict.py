"""Classify image files with a trained model and print the top-k classes.

    python -m minivit.predict --checkpoint runs/finetune/best.npz photo.jpg digit.npy
    python -m minivit.predict --checkpoint runs/mnist/best.npz --resize --top-k 3 scan.png
    python -m minivit.predict --npz ViT-B_16.npz --resize cat.jpg        # class indices only
    python -m minivit.predict --pretrained vit-base-patch16-224/ cat.jpg  # transformers / timm

Images: PNG/JPEG (needs Pillow: pip install -e .[images]) or .npy (see
minivit/data/imagefolder.py). They are converted to the model's channels (gray repeated to RGB,
or RGB to luma; a note says so) and must be the model's size unless --resize (bilinear).
--pretrained takes any checkpoint minivit.io.load_pretrained reads (a transformers or timm
folder, a .safetensors file, a Google or minivit .npz) and applies its own preprocessing: the
resize, center crop and normalization of its preprocessor_config.json / pretrained_cfg.
Normalization and class names: the model's Preprocessing (saved in minivit checkpoints; for
--npz, vit_jax's [-1, 1] inputs). --mean/--std override it.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..data.imagefolder import load_images
from ..io.checkpoint import load_checkpoint
from ..io.google import load_google_npz
from ..io.pretrained import load_pretrained
from ..io.preprocess import prepare_images
from ..training.evaluate import predict_probs
from . import add_device_args, run, use_device


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m minivit.predict",
                                 description="Print the top-k classes of image files.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="FILE", help="a minivit checkpoint (.npz)")
    src.add_argument("--npz", metavar="FILE", help="a Google (vit_jax) ViT .npz")
    src.add_argument("--pretrained", metavar="PATH",
                     help="a transformers or timm folder (config.json + model.safetensors), a "
                          ".safetensors file, or a Google/minivit .npz; its preprocessing is "
                          "applied (resize, center crop, normalization)")
    ap.add_argument("--gelu", choices=("tanh", "erf"), default=None,
                    help="GELU of a --npz or --pretrained model (default: the source's)")
    ap.add_argument("--top-k", type=int, default=5, help="classes to show per image")
    ap.add_argument("--resize", action="store_true",
                    help="resize images to the model's size (bilinear) instead of failing")
    ap.add_argument("--mean", type=float, nargs="+", default=None,
                    help="override the normalization mean of pixel/255 (one or per channel)")
    ap.add_argument("--std", type=float, nargs="+", default=None, help="see --mean")
    ap.add_argument("--batch-size", type=int, default=64)
    add_device_args(ap, workers=False)
    ap.add_argument("images", nargs="+", metavar="IMAGE", help=".png, .jpg, .jpeg or .npy files")
    return ap


def load_model(args) -> tuple:
    """(model, class names or None, mean, std) from --checkpoint or --npz."""
    gelu = {"gelu": args.gelu} if args.gelu else {}
    if args.npz:
        model = load_google_npz(args.npz, **gelu)
    elif args.pretrained:
        model = load_pretrained(args.pretrained, **gelu)
        if not model.config.num_classes:
            raise ValueError(f"{args.pretrained} has no classifier head (a feature extractor: "
                             f"forward returns its pooled features); fine-tune a head first")
    else:
        if args.gelu:
            raise ValueError("--gelu applies to --npz only: a minivit checkpoint records its GELU")
        model = load_checkpoint(args.checkpoint)["model"]
    pre = model.preprocessing
    names = pre.class_names if pre is not None else None
    mean = pre.mean if pre is not None else None
    std = pre.std if pre is not None else None
    K = model.config.num_classes
    if names is not None and len(names) != K:
        print(f"note: the checkpoint names {len(names)} classes but the model has {K} outputs; "
              f"showing class indices", file=sys.stderr)
        names = None
    mean = args.mean if args.mean is not None else mean
    std = args.std if args.std is not None else std
    if mean is None or std is None:
        raise ValueError(f"{args.checkpoint or args.npz or args.pretrained} records no "
                         f"normalization (mean and std of pixel / 255); pass --mean and --std "
                         f"as used in training")
    return model, names, mean, std


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
    use_device(args)
    model, names, mean, std = load_model(args)
    pre = model.preprocessing
    if pre is not None and pre.resize_size is not None:               # the source's own resize
        images = prepare_images(args.images, pre, model.config.in_channels)   # (M, C, S, S)
    else:
        images = load_images(args.images, model.config.image_size, model.config.in_channels,
                             args.resize)                             # (M, C, S, S)
    probs = predict_probs(model, images, args.batch_size, mean, std)  # (M, K)
    k = min(args.top_k, probs.shape[1])
    results = []
    for path, p in zip(args.images, probs):
        order = np.argsort(-p, kind="stable")[:k]
        top = [{"index": int(i), "class": str(names[i]) if names else f"class {i}",
                "prob": float(p[i])} for i in order]
        results.append({"file": os.fspath(path), "top": top})
        print(format_result(path, top))
    return results


def entry() -> None:
    """The minivit-predict console script."""
    run(main)


if __name__ == "__main__":
    entry()
