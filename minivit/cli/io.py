"""Describe a checkpoint in any layout, or convert between layouts (minivit-io, or
python -m minivit.io).

    minivit-io info vit-base-patch16-224/           # transformers, timm, Google, minivit
    minivit-io info vit_small.safetensors --heads 6  # a bare file that does not record heads
    minivit-io convert vit-base-patch16-224/ out/ --to timm [--image-size 384]
    minivit-io convert runs/mnist/best.npz mnist_vit.npz --to google
    minivit-io export runs/mnist/best.npz mnist_vit.npz     # = convert --to google
"""
from __future__ import annotations

import argparse
import json

from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.google import read_google_npz, save_google_npz
from ..io.pretrained import describe_pretrained, load_pretrained, save_pretrained
from . import command_name, run

TARGETS = ("hf", "timm", "google", "minivit")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=command_name("minivit-io"),
                                 description="Describe a ViT checkpoint (transformers, timm, "
                                             "Google .npz or minivit) or convert it to another "
                                             "layout.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    info = sub.add_parser("info", help="print the format, config and preprocessing of a "
                                       "checkpoint (reads headers only for safetensors)")
    info.add_argument("path", help="a folder (config.json + model.safetensors), a .safetensors "
                                   "file or an .npz")
    info.add_argument("--heads", type=int, default=None,
                      help="the head count, for timm or bare files that do not record it")
    conv = sub.add_parser("convert", help="load a checkpoint in any layout and write it in "
                                          "another")
    conv.add_argument("src")
    conv.add_argument("out", help="a folder for --to hf/timm, an .npz file for google/minivit")
    conv.add_argument("--to", choices=TARGETS, required=True)
    conv.add_argument("--heads", type=int, default=None, help="see info --heads")
    conv.add_argument("--image-size", type=int, default=None,
                      help="resample the position table for this input size first")
    ex = sub.add_parser("export", help="write a minivit checkpoint's weights as a Google .npz "
                                       "(convert --to google)")
    ex.add_argument("checkpoint")
    ex.add_argument("out")
    return ap


def convert(src: str, out: str, to: str, **overrides):
    """Load src (any layout) and write it as `to`; returns the model."""
    model = load_pretrained(src, **overrides)
    if to == "minivit":
        save_checkpoint(out, model)
    else:
        save_pretrained(model, out, format=to)
    return model


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.cmd == "export":
        model = load_checkpoint(args.checkpoint)["model"]
        save_google_npz(model, args.out)
        print(f"wrote {args.out} ({model.num_params():,} parameters, "
              f"{len(read_google_npz(args.out))} arrays)")
        return
    heads = {"heads": args.heads} if args.heads else {}
    if args.cmd == "info":
        print(json.dumps(describe_pretrained(args.path, **heads), indent=2))
        return
    if args.image_size:
        heads["image_size"] = args.image_size
    model = convert(args.src, args.out, args.to, **heads)
    print(f"wrote {args.out} ({args.to}, {model.num_params():,} parameters)")


def entry() -> None:
    """The minivit-io console script."""
    run(main)


if __name__ == "__main__":
    entry()
