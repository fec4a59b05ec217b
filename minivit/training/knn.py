"""k-nearest-neighbour classification on features: how good a model's representation is without
training a classifier (the evaluation of self-supervised ViTs; `minivit-evaluate --knn K`).

The weighted k-NN of Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric Instance
Discrimination") as DINO evaluates with it (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers", eval_knn.py): features are L2-normalized, a test image's
K nearest training images are those of highest cosine similarity s, and each votes for its own
class with weight exp(s / T); the class scores are the votes summed per class,

    score[c] = sum over the K neighbours j with label c of exp(s_j / T),     T = 0.07

and the prediction is the class of the highest score (top-5: the five highest). A small T makes
the nearest neighbours count much more than the K-th.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError

__all__ = ["knn_predict", "l2_normalize", "TEMPERATURE", "DEFAULT_K"]

TEMPERATURE = 0.07          # DINO's T
DEFAULT_K = 20              # DINO reports k = 20 (and 10, 100, 200)
CHUNK_ELEMENTS = 1 << 22    # similarities held at once: 4M float64 numbers, 32 MiB


def l2_normalize(f: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length, in float64 (a zero row stays zero)."""
    f = np.asarray(f, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), eps)


def knn_predict(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, k: int,
                T: float = TEMPERATURE, num_classes: int | None = None,
                chunk: int | None = None) -> np.ndarray:
    """Class scores (M, num_classes) of test features (M, D) by temperature-weighted k-NN over
    training features (N, D) with integer labels (N,): score[i, c] = sum of exp(s / T) over
    the k training rows most cosine-similar to test row i whose label is c (the module
    docstring). The features are L2-normalized here, so cosine similarity is a dot product.
    k larger than N uses all N. Vectorized, in chunks of test rows so that at most about
    CHUNK_ELEMENTS similarities (chunk x N) are held at once (chunk: test rows per step, to
    override). The prediction is scores.argmax(1); top-k accuracy: training.evaluate.topk_hits."""
    train_y = np.asarray(train_y).astype(np.int64)
    if train_f.ndim != 2 or test_f.ndim != 2 or train_f.shape[1] != test_f.shape[1]:
        raise UserError(f"features must be (N, D) and (M, D) of the same D, got "
                        f"{train_f.shape} and {test_f.shape}")
    if len(train_y) != len(train_f) or len(train_f) == 0:
        raise UserError(f"{len(train_f)} training features and {len(train_y)} labels: give one "
                        f"label per training feature, at least one")
    if k < 1 or not T > 0:
        raise UserError(f"k must be >= 1 and T > 0, got k={k}, T={T}")
    C = int(train_y.max()) + 1 if num_classes is None else int(num_classes)
    if train_y.min() < 0 or train_y.max() >= C:
        raise UserError(f"labels must be in 0..{C - 1}, got {train_y.min()}..{train_y.max()}")
    N, M = len(train_f), len(test_f)
    k = min(k, N)
    a, b = l2_normalize(train_f), l2_normalize(test_f)
    rows = chunk or max(1, CHUNK_ELEMENTS // N)
    scores = np.zeros((M, C), dtype=np.float64)
    for lo in range(0, M, rows):
        sim = b[lo:lo + rows] @ a.T                                      # (m, N) cosines
        m = len(sim)
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < N else \
            np.broadcast_to(np.arange(N), (m, N))                        # (m, k) neighbours
        s = np.take_along_axis(sim, nn, axis=1)                          # (m, k)
        w = np.exp(s / T)                                                # (m, k) votes
        np.add.at(scores[lo:lo + m], (np.arange(m)[:, None], train_y[nn]), w)
    return scores

