"""training/knn.py: DINO's temperature-weighted k-NN equals a plain loop written from its
definition (cosine similarity, the k nearest, votes exp(s / T) summed per class), whatever the
chunking; and training.evaluate.topk_hits, which reads its top-1 and top-5."""
import math

import numpy as np
import pytest

from minivit.training.evaluate import topk_hits
from minivit.training.knn import TEMPERATURE, knn_predict, l2_normalize


def brute_force(train_f, train_y, test_f, k, T, C) -> np.ndarray:
    """One test row at a time, one training row at a time: the definition."""
    out = np.zeros((len(test_f), C))
    for i, q in enumerate(test_f):
        sims = []
        for j, t in enumerate(train_f):
            cos = sum(a * b for a, b in zip(q, t)) / (math.sqrt(sum(a * a for a in q))
                                                      * math.sqrt(sum(b * b for b in t)))
            sims.append((cos, j))
        for cos, j in sorted(sims, reverse=True)[:k]:
            out[i, train_y[j]] += math.exp(cos / T)
    return out


@pytest.mark.parametrize("k, chunk", [(1, None), (7, 3), (50, 5), (80, 4)])
def test_knn_equals_the_brute_force_loop(k, chunk):
    rng = np.random.default_rng(k)
    N, M, D, C = 50, 13, 6, 4
    train_f = rng.standard_normal((N, D)) * rng.uniform(0.5, 3, (N, 1))   # norms differ
    train_y = rng.integers(0, C, N)
    test_f = rng.standard_normal((M, D)).astype(np.float32)
    got = knn_predict(train_f.astype(np.float32), train_y, test_f, k, TEMPERATURE, C, chunk=chunk)
    want = brute_force(train_f, train_y, test_f.astype(np.float64), min(k, N), TEMPERATURE, C)
    assert got.shape == (M, C)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.array_equal(got.argmax(1), want.argmax(1))


def test_knn_finds_clusters_and_checks_its_input():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 5
    y = np.repeat(np.arange(3), 10)
    f = centres[y] + rng.standard_normal((30, 8)) * 0.3
    q = centres + rng.standard_normal((3, 8)) * 0.3
    scores = knn_predict(f, y, q, 5, num_classes=4)          # a class without training images
    assert scores.argmax(1).tolist() == [0, 1, 2] and (scores[:, 3] == 0).all()
    assert np.allclose(np.linalg.norm(l2_normalize(f), axis=1), 1)
    with pytest.raises(ValueError, match="same D"):
        knn_predict(f, y, q[:, :4], 5)
    with pytest.raises(ValueError, match="one label per training feature"):
        knn_predict(f, y[:-1], q, 5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_predict(f, y, q, 0)
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        knn_predict(f, y, q, 3, num_classes=2)


def test_topk_hits_against_a_direct_computation():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((40, 7))
    targets = rng.integers(0, 7, 40)
    for k in (1, 3, 5, 9):
        want = [t in sorted(range(7), key=lambda c: -s[c])[:k] for s, t in zip(scores, targets)]
        assert topk_hits(scores, targets, k).tolist() == want
    tie = np.array([[1.0, 1.0, 0.0]])
    assert topk_hits(tie, [0], 1).all() and not topk_hits(tie, [1], 1).any()   # as argmax
