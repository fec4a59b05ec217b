"""The CPU runtime and the batch split: cores, worker threads, their BLAS threads, the allocator.

How minivit uses the CPU is one object, a Runtime: the cores it may use, the worker threads a
large batch is split over (and the pool that runs them), NumPy's OpenBLAS thread control, and
whether glibc's allocator is tuned. Nothing here is process-wide configuration: each model holds
its runtime (ViT(..., runtime=...); by default Runtime.from_env(), read when the model is built)
and passes it down to kernels.plan() and the token split. The commands build one from their
flags and the environment, apply() it once (the allocator, the main thread's BLAS threads) and
give it to every model they build or load. What stays module-level are facts about the loaded
library: OpenBLAS's thread-count functions (blas_threads, set_blas_threads) and the count it
started with.

NumPy runs elementwise work on one core, so the fast kernels split a large batch into pieces
(Runtime.split_batch) run by worker threads (Runtime.parallel_map; NumPy releases the GIL inside
large operations), each limited to its share of the cores as BLAS threads (Runtime.share_cores);
a batch too small to split has its tokens split for inference (Runtime.split_tokens). The
backward sums the pieces' gradients in piece order as they are made (OrderedSum). On CuPy the
batch is never split.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Optional

from ..errors import UserError

MIN_PIECE = 16 * 17 * 64   # smallest batch piece worth a worker thread, in token rows x width
                            # (images x tokens x dim): 16 MNIST images; a third of a ViT-B/16
                            # image (197 tokens x 768)
MIN_TOKEN_PIECE = 32 * 768  # smallest token piece worth a worker thread, in rows x width:
                            # ViT-S/16 (197 x 384) splits, ViT-Ti/16 (197 x 192) does not


@dataclasses.dataclass(frozen=True)
class Runtime:
    """cores: the cores it may use (None: as many as NumPy's BLAS was started with, from
    OPENBLAS_NUM_THREADS / OMP_NUM_THREADS or threadpoolctl, else every core); workers: threads
    a large NumPy batch is split over (None: one per core, at most 8; 1 disables the split);
    tune_allocator: let apply() tune glibc's allocator (tune_host_allocator). Runtime() reads
    no MINIVIT_ variable; Runtime.from_env() does. Its worker pool is made on first use and
    shared by every model that holds this runtime (a copy or a pickle starts without one)."""
    cores: Optional[int] = None
    workers: Optional[int] = None
    tune_allocator: bool = True

    def __post_init__(self):
        for name in ("cores", "workers"):
            n = getattr(self, name)
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
                raise UserError(f"{name} must be a positive integer or None, got {n!r}")
        object.__setattr__(self, "_pool", None)           # not a field: no part of the value

    def __getstate__(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_pool", None)

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Runtime":
        """MINIVIT_WORKERS (worker threads) and MINIVIT_NO_MALLOPT=1 (leave the allocator
        alone), read now; keyword arguments override them."""
        environ = os.environ if environ is None else environ
        env = environ.get("MINIVIT_WORKERS")
        try:
            workers = int(env) if env else None
        except ValueError:
            raise UserError(f"MINIVIT_WORKERS must be a positive integer, got {env!r}") from None
        fields = dict(workers=workers, tune_allocator=environ.get("MINIVIT_NO_MALLOPT") != "1")
        return cls(**{**fields, **overrides})

    def core_count(self) -> int:
        """The cores this runtime uses: `cores` (at most the machine's), else BLAS's start."""
        machine = os.cpu_count() or 1
        if self.cores:
            return min(self.cores, machine)
        start = _blas_at_start()
        return min(machine, start) if start else machine

    def worker_count(self) -> int:
        """How many pieces a large NumPy batch is split into (1 without BLAS thread control:
        the cores cannot be shared out as BLAS threads, so BLAS keeps them)."""
        if not _blas_functions():
            return 1
        return self.workers if self.workers is not None else min(self.core_count(), 8)

    def apply(self) -> "Runtime":
        """What the commands do once at start: tune the allocator if asked (process-wide) and
        set the main thread's BLAS threads to this runtime's cores. Returns self."""
        if self.tune_allocator:
            tune_host_allocator()
        set_blas_threads(self.core_count())
        return self

    def split_batch(self, batch_size: int, image_work: int = 1) -> list:
        """Batch slices for the worker threads: at most worker_count(), each of at least
        MIN_PIECE in work (image_work = tokens x width of one image), since what a piece saves
        is the elementwise work over its rows (benchmarks/layers.py measures the pieces)."""
        n = max(1, min(self.worker_count(), batch_size, batch_size * image_work // MIN_PIECE))
        return _even(batch_size, n)

    def split_tokens(self, batch_size: int, tokens: int, dim: int) -> list:
        """Token slices for the worker threads when the batch itself is too small to split (one
        piece): the inference of one ViT-B/16 image runs its row-wise work (LayerNorm, the
        linear layers, GELU) and its attention by query rows on the workers, each over a share
        of the tokens. At most worker_count() pieces, each of at least MIN_TOKEN_PIECE rows x
        width; [] when fewer than two would be worth it (MIN_TOKEN_PIECE is where it stopped
        paying)."""
        n = min(self.worker_count(), tokens, batch_size * tokens * dim // MIN_TOKEN_PIECE)
        return _even(tokens, n) if n > 1 else []

    def share_cores(self, parts: int) -> None:
        """Give each of `parts` concurrent pieces an equal share of the cores as BLAS threads
        (one piece: all of them). parallel_map calls it for its pieces, the model before a
        forward or backward that runs as one piece.

        OpenBLAS's thread count is one number for the whole process (its "per-thread" setter
        too changes it for every thread), so the share stays set after the call, and NumPy code
        run later in the process gets it as well. It is changed only when the share changes,
        because raising it wakes OpenBLAS's own threads, which then spin on the cores for a
        while."""
        want = max(1, self.core_count() // max(1, parts))
        if blas_threads() not in (None, want):
            set_blas_threads(want)

    def parallel_map(self, fn, items: list) -> list:
        """[fn(item) for item in items], on this runtime's worker threads, each with its share
        of the cores as BLAS threads (share_cores); a single item runs in the calling thread
        with the BLAS threads as they are. A piece's exception is raised here once every piece
        is done."""
        if len(items) == 1:
            return [fn(items[0])]
        pool = self._pool
        if pool is None or pool._max_workers < len(items):
            pool = ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="minivit")
            object.__setattr__(self, "_pool", pool)
        self.share_cores(len(items))
        futures = [pool.submit(fn, item) for item in items]
        wait(futures)
        return [f.result() for f in futures]


_allocator_tuned = False


def tune_host_allocator() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel.

    Every NumPy temporary of a ViT step is 0.1-10 MB. By default glibc serves such blocks with a
    fresh mmap and unmaps them on free, so each one is page-faulted and zeroed by the kernel
    again. Raising the mmap and trim thresholds (mallopt) makes those blocks come from the
    reused heap instead. Process-wide, so only Runtime.apply() calls it (the commands and the
    benchmarks do); a no-op off glibc. Returns True when applied."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux"):
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


_blas = None          # (get, set) of OpenBLAS's thread count, or () when there is none
_blas_start = None    # its thread count before minivit first changed it (0: unknown)


def _blas_functions():
    """(get, set) of NumPy's OpenBLAS thread count, looked up once; () when there is none."""
    global _blas
    if _blas is None:
        get, put = _openblas("openblas_get_num_threads"), _openblas("openblas_set_num_threads")
        _blas = (get, put) if get is not None and put is not None else ()
    return _blas


def _blas_at_start() -> int:
    """OpenBLAS's thread count as the process started it (read once, before any change)."""
    global _blas_start
    if _blas_start is None:
        _blas_start = blas_threads() or 0
    return _blas_start


def blas_threads() -> int | None:
    """The thread count of the OpenBLAS that NumPy uses (one number for the whole process), or
    None when it cannot be found (another BLAS, or a NumPy without one)."""
    fns = _blas_functions()
    return int(fns[0]()) if fns else None


def set_blas_threads(n: int) -> bool:
    """Set that count; False when there is no OpenBLAS to set it in."""
    fns = _blas_functions()
    if fns:
        _blas_at_start()                                  # remember the starting count first
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
