"""data/batches.py: normalization, augmentation and the seeded batch iterator."""

import numpy as np
import pytest

from minivit import backend
from minivit.data.batches import (BatchIterator, iterate_batches, normalize,
                                  random_resized_crop_flip, random_shift)
from minivit.data.mnist import MNIST_MEAN, MNIST_STD

def test_normalize_values():
    x = np.array([[[0, 255], [51, 128]]], dtype=np.uint8)           # (1, 2, 2)
    np.testing.assert_allclose(normalize(x)[:, 0], x / 255.0, rtol=1e-6)   # defaults: [0, 1]
    out = normalize(x, mean=MNIST_MEAN, std=MNIST_STD)
    assert out.shape == (1, 1, 2, 2) and out.dtype == np.float32
    want = (x[:, None] / 255.0 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    assert abs(out[0, 0, 0, 0] + 0.1307 / 0.3081) < 1e-6
    assert abs(out[0, 0, 0, 1] - (1 - 0.1307) / 0.3081) < 1e-6
    assert normalize(x, "float64").dtype == np.float64


def test_normalize_per_channel_and_errors():
    x = np.full((2, 3, 4, 4), 255, dtype=np.uint8)
    out = normalize(x, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, 3.0, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="np.moveaxis"):
        normalize(np.zeros((2, 4, 4, 3, 1), np.uint8))
    with pytest.raises(ValueError, match="one per channel"):
        normalize(x, mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="float type"):
        normalize(x, dtype="int32")


def make_set(n=23, h=5, w=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), np.arange(n) % 10


def test_batches_shapes_dtypes(xp):
    images, labels = make_set()
    it = iterate_batches(images, labels, 5, seed=1)
    assert len(it) == 5
    batches = list(it)
    assert len(batches) == 5 and [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    for x, y in batches:
        assert backend.xp_of(x) is xp and backend.xp_of(y) is xp
        assert x.dtype == np.float32 and x.shape == (len(y), 1, 5, 6) and y.dtype == np.int64
    x64, _ = next(iter(iterate_batches(images, labels, 4, dtype="float64", drop_last=True)))
    assert x64.dtype == np.float64 and x64.shape == (4, 1, 5, 6)
    assert len(iterate_batches(images, labels, 5, drop_last=True)) == 4


def test_batches_cover_every_sample_and_normalize():
    images, _ = make_set()
    labels = np.arange(len(images))                                  # label = sample index
    it = BatchIterator(images, labels, 4, seed=3, mean=MNIST_MEAN, std=MNIST_STD)
    seen = []
    for x, y in it:
        seen += y.tolist()
        want = (images[y][:, None] / 255.0 - MNIST_MEAN) / MNIST_STD
        np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-6)
    assert sorted(seen) == list(range(len(images))) and seen != sorted(seen)
    it_dl = BatchIterator(images, labels, 4, seed=3, drop_last=True)
    seen_dl = np.concatenate([y for _, y in it_dl])
    assert len(seen_dl) == 20 and len(set(seen_dl.tolist())) == 20


def epoch_labels(it):
    return np.concatenate([backend.to_numpy(y) for _, y in it]).tolist()


def test_batches_deterministic_per_seed_and_epoch():
    images, _ = make_set(n=40)
    labels = np.arange(40)
    a = epoch_labels(BatchIterator(images, labels, 8, seed=5, epoch=2))
    b = epoch_labels(BatchIterator(images, labels, 8, seed=5, epoch=2))
    assert a == b
    it = BatchIterator(images, labels, 8, seed=5)
    e0 = epoch_labels(it)
    it.set_epoch(1)
    e1 = epoch_labels(it)
    it.set_epoch(2)
    assert epoch_labels(it) == a
    assert e0 != e1 and sorted(e0) == sorted(e1) == list(range(40))
    assert epoch_labels(BatchIterator(images, labels, 8, seed=6, epoch=2)) != a
    assert epoch_labels(BatchIterator(images, labels, 8, shuffle=False)) == list(range(40))


def test_batches_resume_mid_epoch():
    images, _ = make_set(n=30)
    labels = np.arange(30)
    full = list(BatchIterator(images, labels, 7, seed=2, epoch=4, augment=True))
    tail = list(BatchIterator(images, labels, 7, seed=2, epoch=4, augment=True).batches(start=2))
    assert len(tail) == len(full) - 2
    for (x, y), (xf, yf) in zip(tail, full[2:]):
        np.testing.assert_array_equal(y, yf)
        np.testing.assert_array_equal(x, xf)


def test_batches_channels_first_and_errors():
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 4, 4), dtype=np.uint8)
    x, y = next(iter(iterate_batches(images, np.arange(6), 4, shuffle=False,
                                     mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))))
    assert x.shape == (4, 3, 4, 4)
    np.testing.assert_allclose(x[:, 1], images[:4, 1] / 255.0 - 0.2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        BatchIterator(images, np.arange(6), 0)
    with pytest.raises(ValueError, match="pass matching arrays"):
        BatchIterator(images, np.arange(5), 2)
    with pytest.raises(ValueError, match="drop_last=False"):
        BatchIterator(images, np.arange(6), 8, drop_last=True)
    with pytest.raises(ValueError, match="float type"):
        BatchIterator(images, np.arange(6), 2, dtype="uint8")


def test_random_shift_moves_content():
    B, s = 400, 2
    x = np.zeros((B, 1, 9, 11), dtype=np.uint8)
    x[:, 0, 4, 5] = 200                                              # one bright pixel per image
    out = random_shift(x, s, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.uint8
    assert (out.reshape(B, -1) > 0).sum(1).tolist() == [1] * B        # moved, never lost
    r, c = np.nonzero(out[:, 0])[1:]
    dy, dx = r - 4, c - 5
    assert np.abs(dy).max() <= s and np.abs(dx).max() <= s
    pairs = set(zip(dy.tolist(), dx.tolist()))
    assert len(pairs) == 25                                          # every shift appears
    np.testing.assert_array_equal(out, random_shift(x, s, np.random.default_rng(0)))
    assert not np.array_equal(out, random_shift(x, s, np.random.default_rng(1)))
    np.testing.assert_array_equal(random_shift(x, 0, np.random.default_rng(0)), x)


def test_random_shift_zero_fills_edges():
    x = np.full((50, 2, 6, 6), 9, dtype=np.uint8)
    out = random_shift(x, 2, np.random.default_rng(3))
    zeros = (out == 0).reshape(50, 2, -1).sum(-1)
    assert (zeros[:, 0] == zeros[:, 1]).all()                        # channels shifted together
    assert zeros.max() > 0 and zeros.min() == 0 and set(np.unique(out)) <= {0, 9}


def test_augmented_batches():
    images, labels = make_set(n=64, h=12, w=12)
    plain = list(BatchIterator(images, labels, 16, seed=0))
    aug = list(BatchIterator(images, labels, 16, seed=0, augment=True))
    again = list(BatchIterator(images, labels, 16, seed=0, augment=True))
    lo = -MNIST_MEAN / MNIST_STD
    for (xp_, yp), (xa, ya), (xg, _) in zip(plain, aug, again):
        np.testing.assert_array_equal(yp, ya)                       # same order, same labels
        assert xa.shape == xp_.shape and xa.dtype == np.float32
        np.testing.assert_array_equal(xa, xg)                       # seeded
        assert not np.array_equal(xa, xp_)
        assert np.isclose(xa, lo).sum() >= np.isclose(xp_, lo).sum()  # zero-filled borders


def test_augment_shifts_vary_by_batch_and_epoch():
    images = np.zeros((32, 9, 9), dtype=np.uint8)
    images[:, 4, 4] = 255                                            # identical images
    it = BatchIterator(images, np.zeros(32, np.int64), 8, shuffle=False, augment=True, seed=0)

    def shifts():                                                    # bright-pixel positions
        return [np.argmax(x.reshape(8, -1), 1).tolist() for x, _ in it]

    e0 = shifts()
    assert len({tuple(s) for s in e0}) == 4                          # no batch repeats another
    it.set_epoch(1)
    assert shifts() != e0


def brute_crop_flip(img, top, left, h, w, flip):
    """One image's random resized crop, pixel by pixel from the definition: output (i, j)
    samples the box at y = top + (i + 1/2) h / H - 1/2 (x alike, mirrored when flipped),
    bilinearly."""
    C, H, W = img.shape
    out = np.zeros((C, H, W))
    for i in range(H):
        for j in range(W):
            jj = W - 1 - j if flip else j
            y = min(max(top + (i + 0.5) * h / H - 0.5, 0), H - 1)
            x = min(max(left + (jj + 0.5) * w / W - 0.5, 0), W - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
            fy, fx = y - y0, x - x0
            out[:, i, j] = ((img[:, y0, x0] * (1 - fx) + img[:, y0, x1] * fx) * (1 - fy)
                            + (img[:, y1, x0] * (1 - fx) + img[:, y1, x1] * fx) * fy)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_random_resized_crop_flip_equals_its_definition():
    """The batched gathers equal a per-pixel loop over each image's own box and flip, with the
    boxes drawn as the function draws them (same generator state)."""
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 9, 7)).astype(np.uint8)
    out = random_resized_crop_flip(x, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    B, C, H, W = x.shape
    area = rng.uniform(0.08, 1.0, B) * H * W
    r = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), B))
    h, w = np.clip(np.sqrt(area / r), 1, H), np.clip(np.sqrt(area * r), 1, W)
    top, left = rng.uniform(0, 1, B) * (H - h), rng.uniform(0, 1, B) * (W - w)
    flip = rng.uniform(0, 1, B) < 0.5
    assert flip.any() and not flip.all()                  # both kinds in this draw
    for b in range(B):
        want = brute_crop_flip(x[b].astype(np.float64), top[b], left[b], h[b], w[b], flip[b])
        assert np.abs(out[b].astype(int) - want.astype(int)).max() <= 1, b   # float32 rounding
    assert out.shape == x.shape and out.dtype == np.uint8


def test_crop_flip_batches_are_seeded_and_split_over_ranks_as_one():
    x = np.random.default_rng(1).integers(0, 256, (8, 3, 6, 6)).astype(np.uint8)
    y = np.arange(8)
    kw = dict(batch_size=4, seed=3, drop_last=True, augment="crop-flip")
    whole = [b[0] for b in BatchIterator(x, y, **kw)]
    again = [b[0] for b in BatchIterator(x, y, **kw)]
    halves = [[b[0] for b in BatchIterator(x, y, shard=(r, 2), **kw)] for r in (0, 1)]
    plain = [b[0] for b in BatchIterator(x, y, **{**kw, "augment": False})]
    for i in range(2):
        np.testing.assert_array_equal(whole[i], again[i])
        np.testing.assert_array_equal(whole[i], np.concatenate([halves[0][i], halves[1][i]]))
        assert not np.array_equal(whole[i], plain[i])
    with pytest.raises(ValueError, match="augment must be"):
        BatchIterator(x, y, batch_size=4, augment="mixup")
