"""Classify image files with a model and print the top-k classes (minivit-predict, or
python -m minivit.predict).

    minivit-predict --model runs/finetune/best.npz photo.jpg digit.npy
    minivit-predict --model runs/mnist/best.npz --resize --top-k 3 scan.png
    minivit-predict --model vit-base-patch16-224/ cat.jpg          # a transformers or timm folder
    minivit-predict --model ViT-B_16.npz --gelu tanh cat.jpg       # Google .npz: class indices

--model takes anything minivit.io.load_pretrained reads (a minivit checkpoint, a Google .npz, a
transformers or timm folder, a .safetensors file); --checkpoint, --npz and --pretrained are the
same flag. The model must have a classifier head. Its Preprocessing prepares the images: a
transformers or timm source's resize, center crop and normalization; a minivit checkpoint's
normalization and class names; a Google .npz's [-1, 1] inputs. --mean/--std override the
normalization; --gelu the GELU of a foreign model (a Google .npz records none: tanh, as Flax).
Images: PNG/JPEG (needs Pillow: pip install -e .[images]) or .npy (see
minivit/data/imagefolder.py), converted to the model's channels (gray repeated to RGB, or RGB to
luma; a note says so). Without a resize in the preprocessing they must be the model's size,
unless --resize (bilinear).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..data.imagefolder import load_images
from ..io.preprocess import prepare_images
from ..training.evaluate import predict_probs
from . import add_device_args, add_model_arg, command_name, load_model, run, use_device


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=command_name("minivit-predict"),
                                 description="Print the top-k classes of image files.")
    add_model_arg(ap, help="; its preprocessing is applied")
    ap.add_argument("--gelu", choices=("tanh", "erf"), default=None,
                    help="GELU of a foreign model (default: the source's; tanh for a Google "
                         ".npz); a minivit checkpoint records its own")
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


def classifier(args) -> tuple:
    """(model, class names or None, mean, std) from --model, --gelu, --mean and --std."""
    model, _ = load_model(args.model, args.gelu)
    if not model.config.num_classes:
        raise ValueError(f"{args.model} has no classifier head (a feature extractor: forward "
                         f"returns its pooled features); fine-tune a head first")
    pre = model.preprocessing
    names = pre.class_names if pre is not None else None
    K = model.config.num_classes
    if names is not None and len(names) != K:
        print(f"note: the checkpoint names {len(names)} classes but the model has {K} outputs; "
              f"showing class indices", file=sys.stderr)
        names = None
    mean = args.mean if args.mean is not None else pre.mean if pre is not None else None
    std = args.std if args.std is not None else pre.std if pre is not None else None
    if mean is None or std is None:
        raise ValueError(f"{args.model} records no normalization (mean and std of pixel / 255); "
                         f"pass --mean and --std as used in training")
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
    model, names, mean, std = classifier(args)
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
