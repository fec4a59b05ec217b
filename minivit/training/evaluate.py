"""Evaluation: logits, predictions and probabilities of uint8 images in batches; accuracy,
per-class accuracy and the confusion matrix."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..data.batches import normalize


def logits_of(model, images: np.ndarray, batch_size: int = 500, mean=None,
              std=None) -> np.ndarray:
    """Host logits (M, K) of uint8 images (M, H, W) or (M, C, H, W), in eval mode, in batches.
    mean/std default to the model's Preprocessing."""
    mean, std = _normalization(model, mean, std)
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(backend.asarray(images[i:i + batch_size]), model.config.dtype, mean, std)
        out.append(backend.to_numpy(model.forward(x)))                     # (b, K)
    return np.concatenate(out) if out else np.zeros((0, model.config.num_classes))


def predict(model, images: np.ndarray, batch_size: int = 500, mean=None, std=None) -> np.ndarray:
    """Class predictions (M,) for uint8 images (M, H, W) or (M, C, H, W), in eval mode."""
    return logits_of(model, images, batch_size, mean, std).argmax(1)


def predict_probs(model, images: np.ndarray, batch_size: int = 64, mean=None,
                  std=None) -> np.ndarray:
    """Class probabilities (M, K) of uint8 images, in eval mode."""
    return softmax(logits_of(model, images, batch_size, mean, std))


def _normalization(model, mean, std) -> tuple:
    """mean and std as given, else the model's Preprocessing; an error naming the fix if none."""
    pre = getattr(model, "preprocessing", None)
    if mean is None:
        mean = pre.mean if pre is not None else None
    if std is None:
        std = pre.std if pre is not None else None
    if mean is None or std is None:
        raise ValueError("the model carries no preprocessing (mean and std of pixel / 255); "
                         "pass mean= and std= (--mean/--std), or use a checkpoint that records "
                         "them")
    return mean, std


def softmax(logits: np.ndarray) -> np.ndarray:
    """p = exp(z - max z) / sum exp(z - max z) per row, in float64 (host)."""
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)        # (M, K)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)                                  # (M, K)


def evaluate(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 500, mean=None,
             std=None, world=None) -> np.ndarray:
    """The confusion matrix (K, K) of the model on uint8 images with integer labels. With a
    world of several processes each predicts its own contiguous share of the images and the
    matrices are summed: exact counts, no sample padded or seen twice."""
    K = model.config.num_classes
    rank, size = (0, 1) if world is None else (world.rank, world.size)
    lo, hi = len(images) * rank // size, len(images) * (rank + 1) // size
    preds = predict(model, images[lo:hi], batch_size, mean, std)
    cm = confusion_matrix(labels[lo:hi], preds, K)                     # (K, K) int64
    if size > 1:
        world.allreduce_(cm)
    return cm


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
