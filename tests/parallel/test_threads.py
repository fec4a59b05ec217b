"""The CPU runtime of parallel/threads.py and the worker-thread helpers the model's batch split
relies on."""
import copy
import pickle
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


def test_split_by_work(monkeypatch):
    """Batch pieces hold at least MIN_PIECE of work (tokens x width): 16 MNIST images (17 x 64)
    or a third of a ViT-B/16 image (197 x 768); a batch that gives one piece may have its
    tokens split instead, in near-equal runs of at least MIN_TOKEN_PIECE."""
    monkeypatch.setattr(threads.Runtime, "worker_count", lambda self: 2)
    rt, mnist, b16 = threads.Runtime(), 17 * 64, 197 * 768
    assert rt.split_batch(31, mnist) == [slice(0, 31)]
    assert rt.split_batch(32, mnist) == [slice(0, 16), slice(16, 32)]
    assert rt.split_batch(8, b16) == [slice(0, 4), slice(4, 8)]
    assert rt.split_batch(1, b16) == [slice(0, 1)]
    assert rt.split_tokens(1, 197, 768) == [slice(0, 98), slice(98, 197)]
    assert rt.split_tokens(1, 197, 384) == [slice(0, 98), slice(98, 197)]
    assert rt.split_tokens(1, 197, 192) == []             # ViT-Ti/16: not worth it (measured)
    assert rt.split_tokens(1, 17, 64) == []


def test_parallel_map_waits_for_every_piece_before_raising():
    finished = []

    def piece(i):
        if i == 0:
            raise ValueError("piece 0 broke")
        time.sleep(0.05)
        finished.append(i)
    with pytest.raises(ValueError, match="piece 0 broke"):
        threads.Runtime(workers=2).parallel_map(piece, [0, 1])
    assert finished == [1]


def test_a_runtime_is_a_value_with_its_own_pool():
    """Runtimes compare by their settings alone; each makes its worker pool on first use and
    keeps it; a copy or a pickle (of a model holding one) starts without a pool."""
    a, b = threads.Runtime(workers=2), threads.Runtime(workers=2)
    assert a == b and hash(a) == hash(b) and a != threads.Runtime(workers=3)
    assert a.parallel_map(lambda i: i * i, [1, 2, 3]) == [1, 4, 9]
    pool = a._pool
    assert pool is not None and b._pool is None
    assert a.parallel_map(lambda i: -i, [1, 2]) == [-1, -2] and a._pool is pool
    for twin in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert twin == a and twin._pool is None
        assert twin.parallel_map(lambda i: i + 1, [1, 2]) == [2, 3]


def test_from_env_reads_the_variables_now():
    env = {"MINIVIT_WORKERS": "3", "MINIVIT_NO_MALLOPT": "1"}
    assert threads.Runtime.from_env(env) == threads.Runtime(workers=3, tune_allocator=False)
    assert threads.Runtime.from_env({}, workers=2) == threads.Runtime(workers=2)
    with pytest.raises(ValueError, match="MINIVIT_WORKERS must be a positive integer"):
        threads.Runtime.from_env({"MINIVIT_WORKERS": "many"})
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        threads.Runtime(workers=0)


def test_each_model_splits_by_its_own_runtime(monkeypatch):
    """Two models in one process, one split over two workers and one not: nothing is shared
    between them but the process's BLAS thread count."""
    if threads.blas_threads() is None:
        pytest.skip("NumPy's OpenBLAS not found: the batch is never split")
    from minivit import ViT, ViTConfig, kernels
    monkeypatch.setattr(threads, "MIN_PIECE", 1)
    cfg = ViTConfig(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8, depth=1,
                    heads=2)
    split, whole = ViT(cfg, runtime=threads.Runtime(workers=2)), ViT(cfg)
    whole.runtime = threads.Runtime(workers=1)
    calls = []
    real = threads.Runtime.parallel_map
    monkeypatch.setattr(threads.Runtime, "parallel_map", lambda self, fn, items:
                        calls.append((self.workers, len(items))) or real(self, fn, items))
    x = np.zeros((4, 1, 8, 8), np.float32)
    split.forward(x)
    whole.forward(x)
    assert calls == [(2, 2 if kernels.enabled() else 1), (1, 1)]
    with pytest.raises(TypeError, match="runtime must be a threads.Runtime"):
        ViT(cfg, runtime=2)


def test_the_model_shares_the_cores_out_as_blas_threads(monkeypatch):
    """A forward split in two pieces runs with half the cores as BLAS threads (OpenBLAS's count
    is one number per process), one piece with all of them; the count changes only when the
    share does."""
    if threads.blas_threads() is None:
        pytest.skip("NumPy's OpenBLAS not found: BLAS threads are not controlled")
    from minivit import ViT, ViTConfig
    monkeypatch.setattr(threads.Runtime, "core_count", lambda self: 4)
    monkeypatch.setattr(threads.Runtime, "worker_count", lambda self: 2)
    monkeypatch.setattr(threads, "MIN_PIECE", 1)
    sets = []
    real = threads.set_blas_threads
    monkeypatch.setattr(threads, "set_blas_threads", lambda n: sets.append(n) or real(n))
    before = threads.blas_threads()
    model = ViT(ViTConfig(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8,
                          depth=1, heads=2))
    x = np.zeros((4, 1, 8, 8), np.float32)
    try:
        seen = []
        model.forward(x)
        monkeypatch.setattr(threads.Runtime, "parallel_map",
                            lambda self, fn, items: seen.append(threads.blas_threads()) or
                            [fn(i) for i in items])
        model.forward(x)
        model.forward(x[:1])
        assert seen == [2, 4] and sets == ([2] if before != 2 else []) + [4]
    finally:
        real(before)


def test_a_blas_thread_limit_set_before_start_is_kept():
    """OPENBLAS_NUM_THREADS=1 at start: minivit uses one core, one worker, and leaves the BLAS
    count at 1 after a forward pass (it used to raise it to every core)."""
    import os
    import subprocess
    import sys
    code = ("import numpy as np\n"
            "from minivit import ViT, ViTConfig\n"
            "from minivit.parallel import threads\n"
            "m = ViT(ViTConfig(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8,"
            " depth=1, heads=2))\n"
            "m.forward(np.zeros((40, 1, 8, 8), np.float32))\n"
            "print(m.runtime.core_count(), m.runtime.worker_count(), threads.blas_threads())\n")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    env.pop("MINIVIT_WORKERS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    cores, workers, blas = out.stdout.split()
    if blas == "None":
        pytest.skip("NumPy's OpenBLAS not found: BLAS threads are not controlled")
    assert (cores, workers, blas) == ("1", "1", "1")
