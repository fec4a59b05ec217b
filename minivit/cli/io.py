"""python -m minivit.io: convert minivit checkpoints to the Google ViT .npz layout, or describe a
Google .npz.

    python -m minivit.io export runs/mnist/best.npz mnist_vit.npz
    python -m minivit.io info ViT-B_16.npz
"""
from __future__ import annotations

import argparse
import json

from ..io.checkpoint import load_checkpoint
from ..io.google import google_config, read_google_npz, save_google_npz
from . import run


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m minivit.io",
                                 description="Convert minivit checkpoints to the Google ViT .npz "
                                             "layout, or describe a Google .npz.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a minivit checkpoint's weights as a Google .npz")
    ex.add_argument("checkpoint")
    ex.add_argument("out")
    info = sub.add_parser("info", help="print the config inferred from a Google .npz")
    info.add_argument("npz")
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.cmd == "export":
        model = load_checkpoint(args.checkpoint)["model"]
        save_google_npz(model, args.out)
        print(f"wrote {args.out} ({model.num_params():,} parameters, "
              f"{len(read_google_npz(args.out))} arrays)")
    else:
        print(json.dumps(google_config(read_google_npz(args.npz)).to_dict(), indent=2))


def entry() -> None:
    """The minivit-io console script."""
    run(main)


if __name__ == "__main__":
    entry()
