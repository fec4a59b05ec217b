"""Write the features of photos to an .npz (minivit-embed, or python -m minivit.embed).

    minivit-embed --model dinov2-small/ photos/ --out features.npz
    minivit-embed --model vit-base-patch16-224/ cat.jpg dog.png --out f.npz --tokens
    minivit-embed --model runs/finetune/best.npz photos/ --out f.npz --overwrite

The .npz holds
    features  (M, D) float32   what the model's classifier head reads, one row per image: the
                               final-normed CLS token (DINOv2: transformers' pooler_output), or
                               the pooled tokens of a mean-pooling model (minivit.embed.features)
    paths     (M,) str         the image of each row, as given or found in a folder
    tokens    (M, N, D) float32  with --tokens: every token after the final LayerNorm (CLS,
                               registers, patches; transformers' last_hidden_state)
Read it with np.load(path) (no pickle: the paths are a fixed-width unicode array).

Any model minivit reads works, with a classifier head or without one (DINOv2 backbones,
num_classes=0); the head's weights are not used. Images, preprocessing, --resize, --mean/--std
(ONE comma-separated value each), skipping and the exit status are as minivit-predict's
(minivit/cli/predict.py): an image that cannot be read is reported on stderr and left out, and
the exit status is then 1; the file is still written with the others. --out is written
atomically, and an existing file is refused unless --overwrite.
"""
from __future__ import annotations

import numpy as np

from . import Parser, add_model_arg, command_name, load_model, use_device
from .flags import add_overwrite_arg
from .predict import (ImageRun, Results, add_image_args, check_images_arg, normalization,
                      output_file, run_photos)


def build_parser() -> Parser:
    ap = Parser(
        prog=command_name("minivit-embed"),
        description="Write the features of photos (files and folders) to an .npz: features "
                    "(M, D), paths (M,), and with --tokens every final-normed token (M, N, D).",
        epilog="--mean/--std take one comma-separated value (--mean 0.485,0.456,0.406). Exit "
               "status 1 when an image was skipped, 2 for a user error.")
    add_model_arg(ap, help="; with or without a classifier head")
    ap.add_argument("--out", required=True, metavar="FILE.npz",
                    help="where to write features, paths [and tokens]")
    ap.add_argument("--tokens", action="store_true",
                    help="also write every final-normed token, (M, N, D) float32")
    add_overwrite_arg(ap, "the --out file")
    add_image_args(ap, batch_size=32)
    return ap


def main(argv=None) -> Results:
    """Embed the images and write --out; return Results whose entries are
    {'path', 'features' (D,)} (and .skipped)."""
    from ..embed import features_of_images
    from ..files import atomic_write
    ap = build_parser()
    args = ap.parse_args(argv)
    check_images_arg(ap, args)
    output_file("--out", args.out, args.overwrite)
    images = ImageRun(args, "embed")
    model, _ = load_model(args.model, args.gelu, runtime=use_device(args))
    mean, std = normalization(model, args, args.model)
    paths, feats, toks = [], [], []
    for batch_paths, batch in images.batches(model):
        out = features_of_images(model, batch, mean, std, tokens=args.tokens)
        f, t = out if args.tokens else (out, None)
        paths += batch_paths
        feats.append(f)                                                  # (b, D)
        if t is not None:
            toks.append(t)                                               # (b, N, D)
    if not paths:
        images.finish(0, f"; nothing written to {args.out}")
        return Results((), images.skipped)
    arrays = {"features": np.concatenate(feats), "paths": np.array(paths, dtype=str)}
    if args.tokens:
        arrays["tokens"] = np.concatenate(toks)
    atomic_write(args.out, lambda fobj: np.savez(fobj, **arrays))      # uncompressed
    shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in arrays.items()
                       if k != "paths")
    images.finish(len(paths), f" -> {args.out} ({shapes})")
    return Results(({"path": p, "features": f} for p, f in zip(paths, arrays["features"])),
                   images.skipped)


def entry() -> None:
    """The minivit-embed console script: exit status 1 when an image was skipped."""
    run_photos(main)


if __name__ == "__main__":
    entry()
