"""python -m minivit.evaluate: accuracy, per-class accuracy and the confusion matrix of a
checkpoint on the MNIST test set.

    python -m minivit.evaluate --checkpoint runs/mnist/best.npz [--data DIR] [--device gpu]
"""
from __future__ import annotations

import argparse
import json

from ..data.mnist import PREPROCESSING, load_mnist
from ..io.checkpoint import load_checkpoint
from ..training.evaluate import confusion_matrix, predict, report
from . import add_device_args, run, use_device


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m minivit.evaluate",
                                 description="Evaluate a minivit checkpoint on the MNIST test set.")
    ap.add_argument("--checkpoint", required=True, help="a minivit .npz checkpoint")
    ap.add_argument("--data", default=None, help="folder with the MNIST files (default: cache)")
    ap.add_argument("--batch-size", type=int, default=500)
    add_device_args(ap, workers=False)
    return ap


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    use_device(args)
    model = load_checkpoint(args.checkpoint)["model"]
    _, _, x_test, y_test = load_mnist(args.data)
    pre = model.preprocessing or PREPROCESSING            # checkpoints without one: MNIST's
    preds = predict(model, x_test, args.batch_size, pre.mean, pre.std)
    cm = confusion_matrix(y_test, preds, model.config.num_classes)
    print(report(cm, pre.class_names))
    result = {"test_acc": float(cm.diagonal().sum() / cm.sum()), "images": int(cm.sum())}
    print(json.dumps(result))
    return result


def entry() -> None:
    """The minivit-evaluate console script."""
    run(main)


if __name__ == "__main__":
    entry()
