"""The CPU batch split: worker threads, their BLAS threads, and the host allocator.

NumPy runs elementwise work on one core. ViT.forward therefore splits a large batch into pieces
(split_batch) run by worker threads (parallel_map; NumPy releases the GIL inside large
operations), each worker limited to its share of the cores as BLAS threads (share_cores) so that
the cores are not oversubscribed; a batch too small to split has its tokens split for inference
(split_tokens). The backward sums the pieces' gradients in piece order as they are made
(OrderedSum). On CuPy the batch is never split.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

MIN_PIECE = 16 * 17 * 64   # smallest batch piece worth a worker thread, in token rows x width
                            # (images x tokens x dim): 16 MNIST images; a third of a ViT-B/16
                            # image (197 tokens x 768)

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
_blas = None      # (get, set) of OpenBLAS's thread count, or () when there is none to control


def _blas_functions():
    """(get, set) of NumPy's OpenBLAS thread count, looked up once; () when there is none."""
    global _blas
    if _blas is None:
        get, put = _openblas("openblas_get_num_threads"), _openblas("openblas_set_num_threads")
        _blas = (get, put) if get is not None and put is not None else ()
    return _blas


def blas_threads() -> int | None:
    """The thread count of the OpenBLAS that NumPy uses (one number for the whole process), or
    None when it cannot be found (another BLAS, or a NumPy without one)."""
    fns = _blas_functions()
    return int(fns[0]()) if fns else None


def set_blas_threads(n: int) -> bool:
    """Set that count; False when there is no OpenBLAS to set it in."""
    fns = _blas_functions()
    if fns:
        fns[1](int(n))
    return bool(fns)


def _openblas(name: str):
    """A function of the OpenBLAS that NumPy loaded, or None. NumPy's wheels bundle
    scipy-openblas, whose symbols carry a prefix and a suffix (scipy_openblas_..._64_); SciPy
    loads a second OpenBLAS of its own, so NumPy's (in its package folder) is tried first."""
    try:
        import ctypes
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
        for path in sorted(paths, key=lambda p: ("numpy" not in p, p)):
            lib = ctypes.CDLL(path)
            for symbol in (name, f"scipy_{name}64_", f"scipy_{name}"):
                fn = getattr(lib, symbol, None)
                if fn is not None:
                    return fn
    except OSError:
        pass
    return None


_blas_at_start = None   # OpenBLAS's thread count before minivit first changed it (0: unknown)


def cores() -> int:
    """The cores this process may use: its share (set_cores), else as many as the BLAS was
    started with (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, or threadpoolctl, if set; otherwise
    every core), at most the machine's."""
    global _blas_at_start
    if _cores:
        return _cores
    if _blas_at_start is None:
        _blas_at_start = blas_threads() or 0
    machine = os.cpu_count() or 1
    return min(machine, _blas_at_start) if _blas_at_start else machine


def set_cores(n: int) -> None:
    """Use n cores in this process (e.g. cores // local ranks under MPI): the default number of
    worker threads and the BLAS threads of the main thread follow. Unpinned, two processes that
    each use every core run several times slower than they should."""
    global _cores
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"cores must be a positive integer, got {n!r}")
    _cores = n
    set_workers(_workers if _workers_from_user else None)
    set_blas_threads(n)


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
    if _workers > 1 and blas_threads() is None:
        return 1          # cannot share the cores out as BLAS threads: let BLAS use them itself
    return _workers


def share_cores(parts: int) -> None:
    """Give each of `parts` concurrent pieces an equal share of the cores as BLAS threads (one
    piece: all of them). parallel_map calls it for its pieces, the model before a forward or
    backward that runs as one piece.

    OpenBLAS's thread count is one number for the whole process (its "per-thread" setter too
    changes it for every thread), so the share stays set after the call, and NumPy code run
    later in the process gets it as well: set_blas_threads(n) sets another. It is changed only
    when the share changes, because raising it wakes OpenBLAS's own threads, which then spin
    on the cores for a while: set and reset around every piece, the ViT-B/16 batch-1 forward
    took 297 instead of 242 ms."""
    want = max(1, cores() // max(1, parts))
    if blas_threads() not in (None, want):
        set_blas_threads(want)


def parallel_map(fn, items: list) -> list:
    """[fn(item) for item in items], on the worker threads, each with its share of the cores as
    BLAS threads (share_cores); a single item runs in the calling thread with the BLAS threads
    as they are. A piece's exception is raised here once every piece is done."""
    global _pool
    if len(items) == 1:
        return [fn(items[0])]
    if _pool is None or _pool._max_workers < len(items):
        _pool = ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="minivit")
    share_cores(len(items))
    futures = [_pool.submit(fn, item) for item in items]
    wait(futures)
    return [f.result() for f in futures]


def split_batch(batch_size: int, image_work: int = 1) -> list:
    """Batch slices for the worker threads: at most workers(), each of at least MIN_PIECE in
    work (image_work = tokens x width of one image), since what a piece saves is the
    elementwise work over its rows. On ViT-B/16 at batch 8 two pieces of 4 ran the forward
    pass 17% faster than one piece with two BLAS threads (2.19 -> 1.81 s on 2 cores), the
    training step 6% faster; at batch 2, two pieces of one image 8% faster (461 -> 425 ms)."""
    n = max(1, min(workers(), batch_size, batch_size * image_work // MIN_PIECE))
    return _even(batch_size, n)


MIN_TOKEN_PIECE = 32 * 768  # smallest token piece worth a worker thread, in token rows x width:
                            # ViT-S/16 (197 x 384) splits, ViT-Ti/16 (197 x 192) does not


def split_tokens(batch_size: int, tokens: int, dim: int) -> list:
    """Token slices for the worker threads when the batch itself is too small to split (one
    piece): the inference of one ViT-B/16 image runs its row-wise work (LayerNorm, the linear
    layers, GELU) and its attention by query rows on the workers, each over a share of the
    tokens. At most workers() pieces, each of at least MIN_TOKEN_PIECE rows x width; [] when
    fewer than two would be worth it. Measured on 2 cores, batch 1: ViT-B/16 251 -> 240 ms,
    ViT-S/16 75.4 -> 73.2 ms, ViT-Ti/16 26.6 -> 28.2 ms (so not split)."""
    n = min(workers(), tokens, batch_size * tokens * dim // MIN_TOKEN_PIECE)
    return _even(tokens, n) if n > 1 else []


def _even(size: int, n: int) -> list:
    """n slices covering range(size) in near-equal consecutive runs."""
    edges = [size * i // n for i in range(n + 1)]
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
