"""Describe a checkpoint in any layout, or convert between layouts (minivit-io, or
python -m minivit.io).

    minivit-io info vit-base-patch16-224/           # transformers, timm, Google, minivit
    minivit-io info vit_small.safetensors --heads 6  # a bare file that does not record heads
    minivit-io convert vit-base-patch16-224/ out/ --to timm [--image-size 384]
    minivit-io convert runs/mnist/best.npz mnist_vit.npz --to google
    minivit-io export runs/mnist/best.npz mnist_vit.npz     # = convert --to google

An existing destination is never replaced without --overwrite, and never converted into
itself: a destination that is the source or inside it is refused. The destination must fit the
layout: a folder for hf and timm, an .npz file for google and minivit.
"""
from __future__ import annotations

import json
import os

from ..errors import UserError
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.google import read_google_npz, save_google_npz, sidecar_path
from ..io.pretrained import describe_pretrained, load_pretrained, save_pretrained
from . import Parser, command_name, run
from .flags import add_overwrite_arg, count, existing_file, new_output, positive

TARGETS = ("hf", "timm", "google", "minivit")


def build_parser() -> Parser:
    ap = Parser(prog=command_name("minivit-io"),
                description="Describe a ViT checkpoint (transformers, timm, Google .npz or "
                            "minivit) or convert it to another layout.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    info = sub.add_parser("info", help="print the format, config and preprocessing of a "
                                       "checkpoint (reads headers only for safetensors)")
    info.add_argument("path", help="a folder (config.json + model.safetensors), a .safetensors "
                                   "file or an .npz")
    info.add_argument("--heads", type=count, default=None,
                      help="the head count, for timm or bare files that do not record it")
    conv = sub.add_parser("convert", help="load a checkpoint in any layout and write it in "
                                          "another")
    conv.add_argument("src")
    conv.add_argument("out", help="a folder for --to hf/timm, an .npz file for google/minivit")
    conv.add_argument("--to", choices=TARGETS, required=True)
    conv.add_argument("--heads", type=count, default=None, help="see info --heads")
    conv.add_argument("--image-size", type=count, default=None,
                      help="resample the position table for this input size first")
    conv.add_argument("--gelu", choices=("tanh", "erf"), default=None,
                      help="the source's GELU, where it does not record it (a Google .npz "
                           "without its NAME.minivit.json: vit_jax's tanh is assumed)")
    conv.add_argument("--eps", type=positive, default=None,
                      help="the source's LayerNorm eps, where it does not record it (a Google "
                           ".npz without its NAME.minivit.json: 1e-6 is assumed)")
    conv.add_argument("--labels", type=existing_file, default=None, metavar="FILE",
                      help="class names, one per line in output order, for a source without "
                           "them (a Google .npz)")
    add_overwrite_arg(conv, "an existing destination")
    ex = sub.add_parser("export", help="write a minivit checkpoint's weights as a Google .npz "
                                       "(convert --to google)")
    ex.add_argument("checkpoint")
    ex.add_argument("out")
    add_overwrite_arg(ex, "an existing destination")
    return ap


def check_destination(src: str, out: str, to: str, overwrite: bool) -> None:
    """ValueError for a destination that is the source or inside it, that exists (without
    overwrite), or that does not fit the layout (a folder for hf/timm, an .npz otherwise)."""
    if not os.path.exists(src):
        raise UserError(f"{src}: no such file or folder; check the path")
    a, b = os.path.realpath(src), os.path.realpath(out)
    if b == a or b.startswith(a.rstrip(os.sep) + os.sep):
        raise UserError(f"the destination {out} is the source {src} or inside it; write the "
                        f"converted model to another path")
    if to in ("hf", "timm") and out.endswith((".npz", ".safetensors", ".json")):
        raise UserError(f"--to {to} writes a folder (config.json + model.safetensors), not "
                        f"{out}; give a folder path")
    if to in ("google", "minivit") and not out.endswith(".npz"):
        raise UserError(f"--to {to} writes an .npz file; give a path ending in .npz, not {out}")
    if to == "google":                                    # what the layout cannot hold
        new_output(sidecar_path(out), overwrite, "the destination's sidecar")
    if os.path.isdir(out) and not os.listdir(out) and not overwrite:
        return                                            # an empty folder is not replaced
    new_output(out, overwrite, "the destination")


CHECKPOINT_FILES = ("config.json", "preprocessor_config.json", "model.safetensors",
                    "model.safetensors.index.json")


def clear_checkpoint_folder(folder: str) -> None:
    """Remove the checkpoint files of an earlier conversion from folder (--overwrite), so that
    none of them (a preprocessor_config.json, shards) is left beside the new ones."""
    for name in os.listdir(folder):
        if name in CHECKPOINT_FILES or (name.startswith("model-") and name.endswith(".safetensors")):
            os.remove(os.path.join(folder, name))


def convert(src: str, out: str, to: str, labels: list | None = None, **overrides):
    """Load src (any layout) and write it as `to`; returns the model. labels name the outputs
    of a source that does not (a Google .npz)."""
    model = load_pretrained(src, **overrides)
    if labels is not None:
        with_labels(model, labels)
    if os.path.isdir(out):
        clear_checkpoint_folder(out)
    if to == "minivit":
        save_checkpoint(out, model)
    else:
        save_pretrained(model, out, format=to)
    return model


def read_labels(path: str) -> list:
    """Class names from a text file, one per line (blank lines at the end left out)."""
    with open(path, encoding="utf-8") as f:
        names = [line.rstrip("\r\n") for line in f]
    while names and not names[-1].strip():
        names.pop()
    return names


def with_labels(model, labels: list) -> None:
    """Set the model's class names (UserError when they are not one per output)."""
    import dataclasses

    from ..config import Preprocessing
    K = model.config.num_classes
    if len(labels) != K:
        raise UserError(f"--labels gives {len(labels)} names for a model of {K} outputs; give "
                        f"one name per line, in output order")
    pre = model.preprocessing or Preprocessing(mean=[0.5] * model.config.in_channels,
                                               std=[0.5] * model.config.in_channels,
                                               image_size=model.config.image_size,
                                               channels=model.config.in_channels)
    model.preprocessing = dataclasses.replace(pre, class_names=list(labels))


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.cmd in ("export", "convert"):
        src = args.checkpoint if args.cmd == "export" else args.src
        check_destination(src, args.out, "google" if args.cmd == "export" else args.to,
                          args.overwrite)
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
    heads.update({k: v for k, v in (("gelu", args.gelu), ("eps", args.eps)) if v is not None})
    labels = read_labels(args.labels) if args.labels else None
    model = convert(args.src, args.out, args.to, labels, **heads)
    print(f"wrote {args.out} ({args.to}, {model.num_params():,} parameters)")


def entry() -> None:
    """The minivit-io console script."""
    run(main)


if __name__ == "__main__":
    entry()
