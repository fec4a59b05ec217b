"""Accuracy, per-class accuracy and the confusion matrix of a model on the MNIST test set
(minivit-evaluate, or python -m minivit.evaluate).

    minivit-evaluate --model runs/mnist/best.npz [--data DIR] [--batch-size 500] [--device gpu]
    minivit-evaluate --model mnist-hf/        # the same model after minivit-io convert --to hf

--model takes anything minivit.io.load_pretrained reads (--checkpoint, its old name, is the
same flag); the model must take 28x28x1 images and have 10 classes. Normalization and class
names come from the model's Preprocessing (MNIST's for a checkpoint that records none).
"""
from __future__ import annotations

import json

from ..data.mnist import PREPROCESSING, load_mnist
from ..training.evaluate import confusion_matrix, predict, report
from . import Parser, add_device_args, add_model_arg, command_name, load_model, run, use_device
from .flags import count, folder


def build_parser() -> Parser:
    ap = Parser(prog=command_name("minivit-evaluate"),
                                 description="Evaluate a model on the MNIST test set.")
    add_model_arg(ap, help="; it must take 28x28x1 images and have 10 classes")
    ap.add_argument("--data", type=folder, default=None,
                    help="folder with the MNIST files (default: cache)")
    ap.add_argument("--batch-size", type=count, default=500)
    add_device_args(ap, workers=False)
    return ap


def check_mnist_model(model, path: str) -> None:
    """ValueError unless the model takes MNIST's 28x28x1 images and has 10 outputs."""
    cfg = model.config
    if (cfg.image_size, cfg.in_channels, cfg.num_classes) != (28, 1, 10):
        raise ValueError(f"{path} takes {cfg.image_size}x{cfg.image_size}x{cfg.in_channels} "
                         f"images with {cfg.num_classes} classes, MNIST is 28x28x1 with 10; "
                         f"use a model trained on MNIST")


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    use_device(args)
    model, _ = load_model(args.model)
    check_mnist_model(model, args.model)
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
