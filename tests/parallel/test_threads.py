"""The worker-thread helpers of parallel/threads.py that the model's batch split relies on."""
import threading
import time

import numpy as np
import pytest

from minivit.parallel import threads


def _run_pieces(fn, n):
    """fn(i) on n threads at once; returns the results, or the exceptions, by piece."""
    out = [None] * n

    def run(i):
        try:
            out[i] = fn(i)
        except BaseException as e:          # collected for the test to look at
            out[i] = e
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in ts), "a piece is still waiting: deadlock"
    return out


def test_ordered_sum_is_the_sum_in_piece_order():
    """Whatever order the threads get there in, out = g0 + g1 + g2 with those roundings
    (float32 values whose sum depends on the order)."""
    rng = np.random.default_rng(0)
    g = [(rng.standard_normal((3, 50)) * 10.0 ** rng.integers(-4, 5, (3, 50))).astype(np.float32)
         for _ in range(3)]
    want = [(g[0][j] + g[1][j]) + g[2][j] for j in range(3)]
    assert any(not np.array_equal(want[j], (g[2][j] + g[1][j]) + g[0][j]) for j in range(3))
    for delays in ([0.0, 0.0, 0.0], [0.02, 0.0, 0.0], [0.0, 0.01, 0.03][::-1]):
        out = [np.full(50, np.nan, np.float32) for _ in range(3)]
        total = threads.OrderedSum(3)

        def piece(i):
            time.sleep(delays[i])
            for j in range(3):
                total.add(i, out[j], g[i][j])
        _run_pieces(piece, 3)
        for j in range(3):
            np.testing.assert_array_equal(out[j], want[j])


def test_a_failing_piece_releases_the_pieces_waiting_on_it():
    total = threads.OrderedSum(2)
    out = np.zeros(4)

    def piece(i):
        if i == 0:
            time.sleep(0.05)
            try:
                raise ValueError("piece 0 broke")
            except ValueError:
                total.fail()
                raise
        total.add(1, out, np.ones(4))
    res = _run_pieces(piece, 2)
    assert isinstance(res[0], ValueError)
    assert isinstance(res[1], RuntimeError) and "another batch piece failed" in str(res[1])
    assert not out.any()                    # nothing was added out of order


def test_split_batch_by_work():
    """Pieces hold at least MIN_PIECE token rows: ViT-B/16 (197 tokens) at batch 8 runs as
    workers() pieces, at batch 1 as one."""
    assert threads.split_batch(1, 197) == [slice(0, 1)]
    pieces = threads.split_batch(8, 197)
    assert len(pieces) == min(threads.workers(), 8)
    assert sum(p.stop - p.start for p in pieces) == 8
