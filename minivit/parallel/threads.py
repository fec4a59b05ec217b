"""The CPU batch split: worker threads, their BLAS threads, and the host allocator.

NumPy runs elementwise work on one core. ViT.forward therefore splits a large batch into pieces
(split_batch) run by worker threads (parallel_map; NumPy releases the GIL inside large
operations), each worker limited to its share of the cores as BLAS threads so that the cores are
not oversubscribed. On CuPy the batch is never split.
"""
from __future__ import annotations

import os
import threading

MIN_PIECE = 16 * 17  # smallest piece worth a worker thread, in token rows (images x tokens):
                     # 16 MNIST images; 2 images of ViT-B/16 (197 tokens)

_allocator_tuned = False


def tune_host_allocator() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel.

    Every NumPy temporary of a ViT step is 0.1-10 MB. By default glibc serves such blocks with a
    fresh mmap and unmaps them on free, so each one is page-faulted and zeroed by the kernel
    again: at batch 128 that was more than half of a training step. Raising the mmap and trim
    thresholds (mallopt) makes those blocks come from the reused heap instead. Process-wide and
    harmless; a no-op off glibc or when MINIVIT_NO_MALLOPT=1. Returns True when applied."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    import sys
    if not sys.platform.startswith("linux") or os.environ.get("MINIVIT_NO_MALLOPT") == "1":
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 512 << 20) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
    except (OSError, AttributeError):
        return False
    _allocator_tuned = ok
    return ok



_workers = None   # None: decided from the core count on first use
_cores = None     # the cores this process may use (None: all of the machine's)
_pool = None
_blas_local = None


def _openblas_local_setter():
    """OpenBLAS's per-thread thread-count setter (OpenBLAS >= 0.3.27), or None."""
    global _blas_local
    if _blas_local is None:
        _blas_local = _openblas("openblas_set_num_threads_local") or False
    return _blas_local or None


def _openblas(name: str):
    """A function of the OpenBLAS that NumPy loaded, or None."""
    try:
        import ctypes
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
        for path in sorted(paths):
            fn = getattr(ctypes.CDLL(path), name, None)
            if fn is not None:
                return fn
    except OSError:
        pass
    return None


def cores() -> int:
    """The cores this process may use: all of the machine's, or its share (set_cores)."""
    return _cores or os.cpu_count() or 1


def set_cores(n: int) -> None:
    """Use n cores in this process (e.g. cores // local ranks under MPI): the default number of
    worker threads and the BLAS threads of the main thread follow. Unpinned, two processes that
    each use every core run several times slower than they should."""
    global _cores
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"cores must be a positive integer, got {n!r}")
    _cores = n
    set_workers(_workers if _workers_from_user else None)
    setter = _openblas("openblas_set_num_threads")
    if setter is not None:
        setter(n)


_workers_from_user = False


def set_workers(n) -> None:
    """Worker threads for NumPy forward/backward (1 disables the batch split; None: automatic)."""
    global _workers, _pool, _workers_from_user
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"workers must be a positive integer or None, got {n!r}")
    _workers, _workers_from_user = n, n is not None
    if _pool is not None:
        _pool.shutdown()
        _pool = None


def workers() -> int:
    """How many chunks a large NumPy batch is split into (1 when the split is unavailable)."""
    global _workers
    if _workers is None:
        env = os.environ.get("MINIVIT_WORKERS")
        _workers = int(env) if env else min(cores(), 8)
    if _workers > 1 and _openblas_local_setter() is None:
        return 1          # cannot pin BLAS per thread: let BLAS use the cores itself
    return _workers


def parallel_map(fn, items: list) -> list:
    """[fn(item) for item in items], run on the worker threads; each worker gets an equal share
    of the cores as BLAS threads (one each on a machine with as many cores as workers)."""
    global _pool
    if len(items) == 1:
        return [fn(items[0])]
    if _pool is None or _pool._max_workers < len(items):
        from concurrent.futures import ThreadPoolExecutor
        setter = _openblas_local_setter()
        blas_threads = max(1, cores() // len(items))
        _pool = ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="minivit",
                                   initializer=lambda: setter(blas_threads))
    return list(_pool.map(fn, items))


def split_batch(batch_size: int, tokens: int = 1) -> list:
    """Batch slices for the worker threads: at most workers(), each of at least MIN_PIECE token
    rows (images x tokens), since what a piece saves is elementwise work over its rows. On
    ViT-B/16 at batch 8 two pieces of 4 ran the forward pass 17% faster than one piece with
    two BLAS threads (2.19 -> 1.81 s on 2 cores), the training step 6% faster."""
    n = max(1, min(workers(), batch_size, batch_size * tokens // MIN_PIECE))
    edges = [batch_size * i // n for i in range(n + 1)]
    return [slice(edges[i], edges[i + 1]) for i in range(n)]


class OrderedSum:
    """Sums the batch pieces' gradients into shared arrays while the pieces' backward passes run,
    in piece order: piece 0 assigns, piece 1 adds once piece 0 has written that array, and so
    on. The sum is the one a finished backward would take, out = g0 + g1 + ... bit for bit,
    but no piece holds a parameter-sized set of gradients of its own (346 MB each for
    ViT-B/16): each block's are added and freed as soon as they exist.

    Each piece must add the same arrays in the same order (they run the same code). Piece i's
    k-th add waits for piece i - 1's k-th; piece 0 never waits, so there is no deadlock as long
    as every piece has its own thread (parallel_map gives them one each)."""

    def __init__(self, pieces: int):
        self._done = [0] * pieces                 # adds finished, per piece
        self._changed = threading.Condition()
        self._failed = False

    def add(self, piece: int, out, value) -> None:
        """out = value (piece 0) or out += value (later pieces, each after the one before)."""
        k = self._done[piece]
        if piece > 0:
            with self._changed:
                while self._done[piece - 1] <= k and not self._failed:
                    self._changed.wait()
                if self._failed:
                    raise RuntimeError("another batch piece failed during backward")
            out += value
        else:
            out[...] = value
        with self._changed:
            self._done[piece] = k + 1
            self._changed.notify_all()

    def fail(self) -> None:
        """A piece failed: release the pieces waiting on it (they raise)."""
        with self._changed:
            self._failed = True
            self._changed.notify_all()
