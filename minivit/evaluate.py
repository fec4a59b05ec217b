"""Evaluation: accuracy, per-class accuracy and the confusion matrix of a model on a test set.

    python -m minivit.evaluate --checkpoint runs/mnist/best.npz [--data DIR] [--device gpu]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from . import backend


def logits_of(model, images: np.ndarray, batch_size: int = 500, mean=0.0, std=1.0) -> np.ndarray:
    """Host logits (M, K) of uint8 images (M, H, W) or (M, C, H, W), in eval mode, in batches."""
    from .data import normalize
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(backend.asarray(images[i:i + batch_size]), model.config.dtype, mean, std)
        out.append(backend.to_numpy(model.forward(x)))                     # (b, K)
    return np.concatenate(out) if out else np.zeros((0, model.config.num_classes))


def predict(model, images: np.ndarray, batch_size: int = 500, mean: float = 0.0,
            std: float = 1.0) -> np.ndarray:
    """Class predictions (M,) for uint8 images (M, H, W) or (M, C, H, W), in eval mode."""
    return logits_of(model, images, batch_size, mean, std).argmax(1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """p = exp(z - max z) / sum exp(z - max z) per row, in float64 (host)."""
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)        # (M, K)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)                                  # (M, K)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[i, j] = how many samples of true class i were predicted as class j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels.astype(np.int64), preds.astype(np.int64)), 1)
    return cm


def report(cm: np.ndarray, class_names=None) -> str:
    """Per-class accuracy and the confusion matrix as text."""
    K = len(cm)
    names = [str(c) for c in (class_names or range(K))]
    w = max(5, max(len(n) for n in names), len(str(cm.max())) + 1)
    per_class = cm.diagonal() / np.maximum(cm.sum(1), 1)
    lines = [f"accuracy {cm.diagonal().sum() / max(cm.sum(), 1):.4f} on {cm.sum()} images",
             "per-class accuracy: " + "  ".join(f"{n}: {a:.4f}" for n, a in zip(names, per_class)),
             "confusion matrix (rows: true class, columns: predicted):",
             " " * w + "".join(n.rjust(w) for n in names)]
    lines += [names[i].rjust(w) + "".join(str(v).rjust(w) for v in row) for i, row in enumerate(cm)]
    return "\n".join(lines)


def main(argv=None) -> dict:
    from .checkpoint import load_checkpoint
    from .data import MNIST_MEAN, MNIST_STD, load_mnist

    ap = argparse.ArgumentParser(prog="python -m minivit.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a minivit .npz checkpoint")
    ap.add_argument("--data", default=None, help="folder with the MNIST files (default: cache)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--batch-size", type=int, default=500)
    args = ap.parse_args(argv)
    backend.use(args.device)
    model = load_checkpoint(args.checkpoint)["model"]
    _, _, x_test, y_test = load_mnist(args.data)
    preds = predict(model, x_test, args.batch_size, MNIST_MEAN, MNIST_STD)
    cm = confusion_matrix(y_test, preds, model.config.num_classes)
    print(report(cm))
    result = {"test_acc": float(cm.diagonal().sum() / cm.sum()), "images": int(cm.sum())}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    from minivit.cli import run
    run(main)
