"""Attention maps: where a model's CLS token looks, per layer and over all layers
(minivit-attention, or python examples/attention_maps.py), on your photos or on MNIST images.

    minivit-attention --model vit-base-patch16-224/ cat.jpg                  # -> attention.png
    minivit-attention --model dinov2-small/ holiday/ --out maps/             # one PNG per image
    minivit-attention --model runs/mnist/best.npz --out attention.png        # MNIST test images
    minivit-attention --quick            # a tiny random model, synthetic digits, no download

--model takes anything minivit.io.load_pretrained reads (--checkpoint, its old name, is the same
flag). Each image gets: the image as the model sees it, then each layer's CLS-token attention
(mean over heads, the CLS query row over the patch tokens only, so that CLS itself, a
distillation token and register tokens are left out of the map) and the attention rollout over
all layers (Abnar & Zuidema 2020; minivit/analysis/attention.py), each upsampled to the image
and min-max scaled for display. A model without a CLS token shows the mean of its patch
tokens' rows instead.

Photos (image files or folders as arguments, read as minivit-predict reads them: every format
Pillow reads and .npy, folders recursively): any model; its preprocessing (resize, center crop,
channels, mean/std) is applied. Where the maps go:
    --out FILE.png (default attention.png)   one grid, one row per image, titled with the
                                             file name and, for a classifier, its top class
    --out DIR (an existing folder, or a      one PNG per image, DIR/<image name>.attention.png
    path not ending in .png)                 (cat.jpg -> cat.attention.png; a second cat.*
                                             gets cat-2.attention.png), its panels in rows
An output that exists already is refused (before anything is computed) unless --overwrite.
An image that cannot be read is reported and left out (exit status 1, as minivit-predict).

MNIST (no image arguments): the model must take 28x28x1 images; --num-images (6) test images
come from --data (the MNIST cache by default; --quick alone draws 3 synthetic ones) and go into
one grid at --out (a PNG file), their numbers printed too.

Without matplotlib the numbers are printed (each image's rollout over the patch grid and each
layer's most-attended patch) and no PNG is written.
"""
from __future__ import annotations

import os
import types

import numpy as np

from .. import backend
from ..analysis.attention import attention_maps
from ..analysis.render import photo_title, predicted, print_numbers, pyplot, render, render_image
from ..config import ViTConfig
from ..data.batches import normalize
from ..data.mnist import PREPROCESSING
from ..errors import UserError
from ..model import ViT
from ..parallel.threads import Runtime
from . import Parser, add_device_args, add_model_arg, command_name, load_model, run, use_device
from .flags import add_overwrite_arg, count, folder, new_output

DEFAULT_OUT = "attention.png"
PHOTO_BATCH = 8             # attention of every layer is kept for a batch: (L, B, H, N, N)
SUFFIX = ".attention.png"


def build_parser() -> Parser:
    from .predict import numbers, positive_numbers
    ap = Parser(prog=command_name("minivit-attention"),
                description="Draw per-layer CLS attention and the attention rollout over "
                            "photos (image files and folders), or over a few MNIST test images "
                            "when none are given.")
    add_model_arg(ap, required=False, help="; with photos any model (its preprocessing is "
                                           "applied); without, one trained on MNIST (28x28x1)")
    ap.add_argument("images", nargs="*", metavar="IMAGE_OR_FOLDER",
                    help="photos: image files (any format Pillow reads, or .npy) and folders of "
                         "them (read recursively); none: MNIST test images")
    ap.add_argument("--out", default=None, metavar="FILE.png|DIR",
                    help=f"FILE.png: one grid, a row per image (default {DEFAULT_OUT}); DIR (an "
                         f"existing folder or a path not ending in .png): one PNG per photo, "
                         f"DIR/<name>{SUFFIX}. Existing files are kept unless --overwrite")
    add_overwrite_arg(ap, "the PNG(s) of --out")
    ap.add_argument("--data", type=folder, default=None,
                    help="MNIST: folder with the MNIST files (default: cache)")
    ap.add_argument("--num-images", type=count, default=6,
                    help="MNIST: how many test images (default 6)")
    ap.add_argument("--resize", action="store_true",
                    help="photos: resize them to the model's size (bilinear) when its "
                         "preprocessing has no resize of its own, instead of skipping them")
    ap.add_argument("--mean", type=numbers, default=None, metavar="M[,M,M]",
                    help="photos: override the normalization mean of pixel/255 (one number, or "
                         "one per channel separated by commas)")
    ap.add_argument("--std", type=positive_numbers, default=None, metavar="S[,S,S]",
                    help="see --mean; each > 0")
    ap.add_argument("--batch-size", type=count, default=PHOTO_BATCH,
                    help=f"photos: images per forward pass (default {PHOTO_BATCH})")
    ap.add_argument("--quiet", action="store_true",
                    help="photos: no progress bar, no notes and no per-image lines")
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


def load(args, runtime: Runtime) -> tuple:
    """MNIST: (model, uint8 images (M, C, S, S), labels (M,), mean, std, class names or None);
    the model runs on the command's runtime."""
    if args.model:
        model, _ = load_model(args.model, runtime=runtime)
    elif args.quick:
        model = ViT(ViTConfig(image_size=28, patch_size=7, dim=16, depth=2, heads=2), seed=0,
                    preprocessing=PREPROCESSING, runtime=runtime)
    else:
        raise UserError("pass --model PATH (or its alias --checkpoint PATH): a model trained "
                        "on MNIST, e.g. runs/mnist/best.npz; or --quick for a tiny random "
                        "model; or --model PATH and image files to see a model's attention "
                        "over your photos")
    pre = model.preprocessing or PREPROCESSING            # checkpoints without one: MNIST's
    cfg = model.config
    if (cfg.image_size, cfg.in_channels) != (28, 1):
        raise UserError(f"the model takes {cfg.image_size}x{cfg.image_size}x{cfg.in_channels} "
                        f"images, MNIST is 28x28x1; use a model trained on MNIST, or give "
                        f"image files or folders to draw its attention over them")
    n = min(args.num_images, 3) if args.quick else args.num_images
    if args.quick and not args.data:
        x, y = synthetic_digits(n)
    else:
        from ..data.mnist import load_mnist
        _, _, x_test, y_test = load_mnist(args.data)
        x, y = x_test[:n, None], y_test[:n]                           # (n, 1, 28, 28)
    return model, x, np.asarray(y), pre.mean, pre.std, pre.class_names


def main(argv=None) -> dict:
    """Draw the maps; return {'layers', 'rollout', 'probs', 'query', 'labels' (MNIST) or
    'paths' (photos), 'out'}: the PNG path(s) written, None when none was."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.images:
        return photos(ap, args)
    out = args.out or DEFAULT_OUT
    new_output(out, args.overwrite)
    model, x, y, mean, std, names = load(args, use_device(args))
    res = attention_maps(model, normalize(backend.asarray(x), model.config.dtype, mean, std))
    print_numbers(res, y, names)
    wrote = render(x, y, res, out, names)
    if wrote:
        print(f"wrote {out}")
    return {**res, "labels": y, "out": out if wrote else None}


# ---- photos -------------------------------------------------------------------------------------
def output_paths(out: str, paths: list, overwrite: bool) -> tuple:
    """('grid', [FILE]) or ('folder', [one PNG per image]) for --out (see the module
    docstring); every one checked with flags.new_output before anything is computed."""
    if not os.path.isdir(out) and out.lower().endswith(".png"):
        return "grid", [new_output(out, overwrite)]
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file but does not end in .png; give FILE.png for "
                        f"one grid, or a folder for one PNG per image")
    taken, targets = set(), []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0] or "image"
        name, n = stem, 1
        while name.lower() in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.lower())
        targets.append(new_output(os.path.join(out, name + SUFFIX), overwrite))
    return "folder", targets


def photos(ap, args) -> dict:
    """The maps of the photos named on the command line."""
    from .predict import ImageRun, check_images_arg, normalization
    check_images_arg(ap, args)
    if args.model is None:
        raise UserError("pass --model PATH with the images: the model whose attention to draw "
                        "(a transformers or timm folder, a .safetensors file, a minivit "
                        "checkpoint); --quick draws a tiny random MNIST model over synthetic "
                        "digits, without images")
    if args.data is not None:
        raise UserError(f"--data {args.data} names MNIST's folder, which is read only when no "
                        f"images are given; leave it out, or leave out the images")
    images = ImageRun(types.SimpleNamespace(images=args.images, quiet=args.quiet,
                                            resize=args.resize, batch_size=args.batch_size),
                      "attention")
    mode, targets = output_paths(args.out or DEFAULT_OUT, images.paths, args.overwrite)
    model, _ = load_model(args.model, runtime=use_device(args))
    mean, std = normalization(model, args, args.model)
    pre = model.preprocessing
    names = pre.class_names if pre is not None else None
    names = names if names is not None and len(names) == model.config.num_classes else None
    index = {p: i for i, p in enumerate(images.paths)}
    paths, xs, parts = [], [], []
    for batch_paths, batch in images.batches(model):
        x = normalize(backend.asarray(batch), model.config.dtype, mean, std)
        parts.append(attention_maps(model, x))
        paths += batch_paths
        xs.append(batch)
    if not paths:
        images.finish(0, "; nothing drawn")
        return {"layers": None, "rollout": None, "probs": None, "paths": [], "out": None,
                "skipped": images.skipped}
    res = {"layers": np.concatenate([r["layers"] for r in parts]),
           "rollout": np.concatenate([r["rollout"] for r in parts]),
           "probs": None if parts[0]["probs"] is None else
           np.concatenate([r["probs"] for r in parts]), "query": parts[0]["query"]}
    x = np.concatenate(xs)                                             # (M, C, S, S) uint8
    titles = [photo_title(p, res, i, names) for i, p in enumerate(paths)]
    plt = pyplot()
    if plt is None:
        print_numbers(res, None, names, titles=paths)
        wrote = []
    elif mode == "grid":
        render(x, None, res, targets[0], names, titles=titles)
        wrote = targets
    else:
        wrote = []
        for i, p in enumerate(paths):
            target = targets[index[p]]
            pred = predicted(res, i, names)
            render_image(x[i], res, i, target, os.path.basename(p) + (f": {pred}" if pred
                                                                       else ""))
            wrote.append(target)
    if not args.quiet and plt is not None:
        for i, p in enumerate(paths):
            pred = predicted(res, i, names)
            line = f"{p}: " + (f"predicted {pred}" if pred else "no classifier head")
            images.out(line + (f" -> {wrote[i]}" if mode == "folder" else ""))
    where = "" if not wrote else (f" -> {wrote[0]}" if mode == "grid"
                                  else f" -> {len(wrote)} PNGs in {args.out}")
    images.finish(len(paths), where)
    out = None if not wrote else wrote[0] if mode == "grid" else wrote
    return {**res, "paths": paths, "out": out,
            "skipped": images.skipped}


def entry() -> None:
    """The minivit-attention console script: exit status 1 when an image was skipped."""
    result = run(main)
    if result.get("skipped"):
        raise SystemExit(1)


if __name__ == "__main__":
    entry()
