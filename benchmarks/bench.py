"""minivit benchmarks: a training step and inference against an eager PyTorch ViT of the same
shape, a per-layer breakdown of minivit's step, and the machine's float32 matmul peak.

    python benchmarks/bench.py --config mnist --impl all --what train --rounds 3
    python benchmarks/bench.py --config mnist-p4 --impl all --what train,infer,peak
    python benchmarks/bench.py --config mnist --what layers
    python benchmarks/bench.py --smoke                    # every part on a tiny model, seconds
    python benchmarks/bench.py --config vit-b16 --device gpu --impl all --batch 64

Method (benchmarks/README.md has the long form):
- train step = forward(train=True) + cross-entropy + backward + AdamW step; inference =
  forward(train=False) (torch: eval mode under torch.no_grad()). Random images, fixed seeds.
  ms/step is the median over --steps timed steps after --warmup untimed ones.
- GFLOP/s = vit_flops(cfg, batch) (x3 for training) / time: matmul FLOPs only, see vit_flops.
- OpenBLAS/OpenMP worker threads spin after each call and slow whatever runs next, so
  `--impl all` runs every measurement in its own fresh process (thread variables set before
  NumPy loads), alternating minivit, torch, minivit, torch for --rounds, and reports the median
  of the rounds and the minivit/torch throughput ratio from that one sitting.
- Peak memory: the process's max RSS on the CPU (each measurement is its own process under
  --impl all); on the GPU the high water of the memory each library's caching allocator holds:
  CuPy's pool total_bytes() / torch.cuda.max_memory_reserved() (both include cached free blocks).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _threads_from_argv(argv: list) -> int:
    """The --threads value in argv (default 2), read before argparse runs."""
    for i, a in enumerate(argv):
        v = argv[i + 1] if a == "--threads" and i + 1 < len(argv) else \
            a.split("=", 1)[1] if a.startswith("--threads=") else None
        if v is not None:
            return int(v) if v.isdigit() and int(v) > 0 else 2   # argparse reports a bad value
    return 2


if __name__ == "__main__":
    # BLAS and OpenMP read these once, when NumPy/PyTorch load: set them before the imports below.
    for _v in THREAD_VARS:
        os.environ[_v] = str(_threads_from_argv(sys.argv[1:]))

import numpy as np  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import minivit  # noqa: F401,E402
except ImportError:          # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(_HERE))
from minivit import ViT, ViTConfig, backend  # noqa: E402
from minivit.layers import cross_entropy_backward, cross_entropy_forward  # noqa: E402

CONFIGS = {
    "mnist": dict(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64, depth=6,
                  heads=4, mlp_ratio=2.0),
    "mnist-p4": dict(image_size=28, patch_size=4, in_channels=1, num_classes=10, dim=128,
                     depth=6, heads=4, mlp_ratio=2.0),
    "vit-b16": dict(image_size=224, patch_size=16, in_channels=3, num_classes=1000, dim=768,
                    depth=12, heads=12, mlp_ratio=4.0),
    "tiny": dict(image_size=16, patch_size=4, in_channels=1, num_classes=10, dim=32, depth=2,
                 heads=2, mlp_ratio=2.0),
}
WHATS = ("peak", "train", "infer", "layers")     # the order they run in
IMPLS = ("minivit", "torch")
LR, WEIGHT_DECAY = 1e-3, 0.05


# ---- FLOPs ------------------------------------------------------------------------------------
def vit_flops(cfg: ViTConfig, batch: int) -> int:
    """Forward FLOPs of one batch, counting 2*M*N*K for every matmul and nothing else.

    Per image, with P patches, N = P + 1 tokens, width D, MLP width F, patch p, channels C,
    classes K (R = representation_size or D):
        patch embed  2 * P * (p*p*C) * D
        per block    qkv 2*N*D*3D + scores q k^T 2*N*N*D + a @ v 2*N*N*D (all H heads)
                     + proj 2*N*D*D + fc1 2*N*D*F + fc2 2*N*F*D
        head         [pre-logits 2*D*R] + 2*R*K
    Elementwise work (LayerNorm, softmax, GELU, adds) is left out. A training step is counted as
    3x the forward (backward = two matmuls per forward matmul). This is the nominal count of the
    full model: minivit's CLS-only last block does less work, so its GFLOP/s are "effective".
    """
    P, N, D, F = cfg.num_patches, cfg.num_tokens, cfg.dim, cfg.mlp_dim
    p, C, K = cfg.patch_size, cfg.in_channels, cfg.num_classes
    R = cfg.representation_size or D
    patch = 2 * P * (p * p * C) * D
    block = 2 * N * D * 3 * D + 2 * 2 * N * N * D + 2 * N * D * D + 2 * 2 * N * D * F
    head = (2 * D * R if cfg.representation_size else 0) + 2 * R * K
    return batch * (patch + cfg.depth * block + head)


# ---- timing and memory ------------------------------------------------------------------------
def time_ms(fn, reps: int, warmup: int, sync, setup=None) -> list:
    """Wall times in ms of `reps` calls of fn() after `warmup` untimed ones; sync() waits for the
    device before each clock read; setup() (untimed) runs before every call when given."""
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    sync()
    out = []
    for _ in range(reps):
        if setup is not None:
            setup()
            sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def rss_now_mb() -> float | None:
    """Resident set size now, MB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        return None


def rss_peak_mb() -> float:
    """Max resident set size of this process so far, MB (ru_maxrss: KB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 2 ** 10


def limit_threads(threads: int, workers: int | None) -> dict:
    """Pin BLAS/OpenMP pools to `threads` (threadpoolctl when available; the environment variables
    did it already when this process was started with them) and minivit's batch split to
    `workers` threads. Returns what the pools report."""
    info = {"threads": threads}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        global _THREAD_LIMITS
        _THREAD_LIMITS = threadpool_limits(limits=threads)   # kept alive for the whole run
        info["pools"] = sorted(f"{p['internal_api']} {p.get('version')} x{p['num_threads']}"
                         for p in threadpool_info())
    except ImportError:
        info["pools"] = ["threadpoolctl not installed: set by " + "/".join(THREAD_VARS)]
    if hasattr(backend, "set_workers"):
        backend.set_workers(workers if workers is not None else threads)
    return info


_THREAD_LIMITS = None


# ---- the two implementations ------------------------------------------------------------------
def host_batch(cfg: ViTConfig, batch: int):
    """Random images (B, C, S, S) float32 and labels (B,) int64 on the host, seed 0."""
    rng = np.random.default_rng(0)
    S, C = cfg.image_size, cfg.in_channels
    x = rng.standard_normal((batch, C, S, S)).astype(cfg.dtype)
    return x, rng.integers(0, cfg.num_classes, batch).astype(np.int64)


class MinivitBench:
    """minivit on NumPy (CPU) or CuPy (GPU)."""
    name = "minivit"

    def __init__(self, cfg: ViTConfig, args):
        if args.device == "gpu":
            backend.use("gpu")
            if args.tf32:
                if hasattr(backend, "set_tf32"):
                    backend.set_tf32(True)
                else:
                    print("note: minivit has no TF32 mode yet; --tf32 ignored for minivit",
                          file=sys.stderr)
        self.cfg, self.gpu = cfg, args.device == "gpu"
        self.model = ViT(cfg, seed=0)
        hx, hy = host_batch(cfg, args.batch)
        self.x, self.y = backend.asarray(hx), backend.asarray(hy)
        self.sync = backend.synchronize
        self.xp = backend.xp()
        self._pool_high = 0

    def info(self) -> dict:
        return {"numpy": np.__version__, "backend": backend.name(),
                "params": self.model.num_params(),
                "batch_pieces": len(_chunk_sizes(self.model, self.x.shape[0]))}

    def train_step(self):
        try:
            from minivit.optim import AdamW
        except ImportError as e:
            raise SystemExit(f"minivit.optim.AdamW is not available ({e}); the train benchmark "
                             f"needs it: add minivit/optim.py or run --what infer,layers,peak")
        model, x, y = self.model, self.x, self.y
        opt = AdamW(model.params, lr=LR, weight_decay=WEIGHT_DECAY)

        def step():
            logits = model.forward(x, train=True)            # (B, K)
            _, cache = cross_entropy_forward(logits, y)
            model.backward(cross_entropy_backward(cache))
            opt.step(model.grads)
            self._track()
        return step

    def infer_step(self):
        def step():
            self.model.forward(self.x, train=False)          # (B, K)
            self._track()
        return step

    def _track(self) -> None:
        if self.gpu:
            self._pool_high = max(self._pool_high,
                                  self.xp.get_default_memory_pool().total_bytes())

    def reset_memory(self) -> None:
        """Start a new high-water mark; on the GPU first hand the pool's cached blocks back
        (e.g. the peak matmul's), so that the mark is this measurement's own."""
        if self.gpu:
            self.xp.get_default_memory_pool().free_all_blocks()
        self._pool_high = 0

    def memory(self) -> dict:
        if self.gpu:
            return {"gpu_peak_mb": self._pool_high / 2 ** 20}
        return {"peak_rss_mb": rss_peak_mb()}

    def matmul_peak(self, n: int, reps: int) -> float:
        """GFLOP/s of an n x n float32 matmul (median of reps) with the backend's BLAS."""
        xp, rng = self.xp, np.random.default_rng(0)
        a, b = (backend.asarray(rng.standard_normal((n, n)), dtype=np.float32) for _ in range(2))
        out = xp.empty((n, n), dtype=np.float32)
        ts = time_ms(lambda: xp.matmul(a, b, out=out), reps, 2, self.sync)
        return 2 * n ** 3 / statistics.median(ts) / 1e6


class TorchBench:
    """The eager PyTorch reference (benchmarks/torch_ref.py) on the CPU or CUDA."""
    name = "torch"

    def __init__(self, cfg: ViTConfig, args):
        import torch
        if _HERE not in sys.path:
            sys.path.insert(0, _HERE)
        from torch_ref import TorchViT
        self.torch = torch
        torch.set_num_threads(args.threads)
        self.gpu = args.device == "gpu"
        if self.gpu:
            if not torch.cuda.is_available():
                raise SystemExit("--device gpu: this PyTorch sees no CUDA GPU; install a CUDA "
                                 "build of torch or use --device cpu")
            torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
            torch.backends.cudnn.allow_tf32 = bool(args.tf32)
        self.dev = torch.device("cuda" if self.gpu else "cpu")
        torch.manual_seed(0)
        self.model = TorchViT(cfg, sdpa=args.torch_sdpa).to(self.dev)
        hx, hy = host_batch(cfg, args.batch)
        self.x = torch.from_numpy(hx).to(self.dev)
        self.y = torch.from_numpy(hy).to(self.dev)
        self.sync = torch.cuda.synchronize if self.gpu else (lambda: None)
        self.sdpa = args.torch_sdpa

    def info(self) -> dict:
        return {"torch": self.torch.__version__, "sdpa": self.sdpa,
                "params": sum(p.numel() for p in self.model.parameters())}

    def train_step(self):
        torch, model, x, y = self.torch, self.model, self.x, self.y
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        model.train()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        return step

    def infer_step(self):
        torch, model, x = self.torch, self.model, self.x
        model.eval()

        def step():
            with torch.no_grad():
                model(x)                                     # (B, K)
        return step

    def reset_memory(self) -> None:
        if self.gpu:
            self.torch.cuda.empty_cache()                    # like CuPy's free_all_blocks
            self.torch.cuda.reset_peak_memory_stats()

    def memory(self) -> dict:
        if self.gpu:                                         # reserved, as CuPy's pool total
            return {"gpu_peak_mb": self.torch.cuda.max_memory_reserved() / 2 ** 20}
        return {"peak_rss_mb": rss_peak_mb()}

    def matmul_peak(self, n: int, reps: int) -> float:
        torch = self.torch
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=g).to(self.dev) for _ in range(2))
        out = torch.empty(n, n, device=self.dev)
        ts = time_ms(lambda: torch.mm(a, b, out=out), reps, 2, self.sync)
        return 2 * n ** 3 / statistics.median(ts) / 1e6


# ---- one process: the measurements ------------------------------------------------------------
def bench_step(impl, what: str, cfg: ViTConfig, args) -> dict:
    """Time impl's train or infer step: ms/step (median), images/s, GFLOP/s, peak memory."""
    step = impl.train_step() if what == "train" else impl.infer_step()
    impl.reset_memory()
    ts = time_ms(step, args.steps, args.warmup, impl.sync)
    ms = statistics.median(ts)
    flops = vit_flops(cfg, args.batch) * (3 if what == "train" else 1)
    return {"what": what, "ms": ms, "ms_min": min(ts), "ms_max": max(ts), "steps": len(ts),
            "images_per_s": args.batch / ms * 1e3, "gflop_per_step": flops / 1e9,
            "gflops": flops / ms / 1e6, **impl.memory()}


def _layer_specs(cfg: ViTConfig, model: ViT) -> list:
    """(name, calls per step, make(b) -> inputs, fwd(*inputs) -> (out, cache), bwd(dout, cache))
    for each layer the breakdown times; per-block layers are called `depth` times a step."""
    from minivit.layers import (attention_backward, attention_forward, fold_affine_backward,
                                fold_affine_forward, layernorm_backward, layernorm_forward,
                                linear_backward, linear_forward, normalize_backward,
                                normalize_forward, patch_embed_backward, patch_embed_forward)
    from minivit.layers.block import mlp_backward, mlp_forward
    p, bp = model.params, model.block_params()[0]
    rng = np.random.default_rng(1)
    S, C, N, D, K, L = (cfg.image_size, cfg.in_channels, cfg.num_tokens, cfg.dim,
                        cfg.num_classes, cfg.depth)
    rand = lambda *shape: backend.asarray(rng.standard_normal(shape).astype(cfg.dtype))

    def head_fwd(t):
        pooled = t[:, 0] if cfg.pool == "cls" else t                     # (b, D) or (b, N, D)
        h, c_norm = layernorm_forward(pooled, p["norm.w"], p["norm.b"], cfg.eps)
        if cfg.pool == "mean":
            h = h[:, 1:].mean(1)                                          # (b, D)
        y, c_head = linear_forward(h, p["head.w"], p["head.b"])           # (b, K)
        return y, (c_norm, c_head, t.shape)

    def head_bwd(dy, cache):
        c_norm, c_head, (b, n, d) = cache
        dh = linear_backward(dy, c_head)[0]                               # (b, D)
        if cfg.pool == "mean":
            xp = backend.xp_of(dy)
            dn = xp.zeros((b, n, d), dtype=dy.dtype)
            dn[:, 1:] = (dh / (n - 1))[:, None, :]
            dh = dn
        return layernorm_backward(dh, c_norm)

    def folded(norm: str, lin: str, fwd, bwd):
        """A block's layer whose first linear `lin` carries LayerNorm `norm`'s affine, as in
        block_forward: (fwd, bwd) of the folded weights and the layer."""
        def f(h):
            (w, b), c_fold = fold_affine_forward(bp[norm + ".w"], bp[norm + ".b"],
                                                 bp[lin + ".w"], bp[lin + ".b"])
            y, cache = fwd(h, w, b)
            return y, (c_fold, cache)

        def b_(dy, cache):
            grads = bwd(dy, cache[1])
            return grads[:1] + fold_affine_backward(grads[1], grads[2], cache[0]) + grads[3:]
        return f, b_

    qkv = folded("norm1", "attn.qkv", linear_forward, linear_backward)
    mlp = folded("norm2", "mlp.fc1",
                 lambda h, w, b: mlp_forward(h, w, b, bp["mlp.fc2.w"], bp["mlp.fc2.b"], cfg.gelu),
                 mlp_backward)
    return [
        ("patch embed", 1, lambda b: (rand(b, C, S, S),),
         lambda x: patch_embed_forward(x, p["patch_embed.w"], p["patch_embed.b"], cfg.patch_size),
         patch_embed_backward),
        ("layernorm normalize (2/block)", 2 * L, lambda b: (rand(b, N, D),),
         lambda x: normalize_forward(x, cfg.eps), normalize_backward),
        ("qkv linear (+norm1 affine)", L, lambda b: (rand(b, N, D),)) + qkv,
        ("attention core", L, lambda b: (rand(b, N, 3 * D),),
         lambda qkv: attention_forward(qkv, cfg.heads), attention_backward),
        ("attn out proj", L, lambda b: (rand(b, N, D),),
         lambda o: linear_forward(o, bp["attn.proj.w"], bp["attn.proj.b"]), linear_backward),
        ("mlp (+norm2 affine)", L, lambda b: (rand(b, N, D),)) + mlp,
        ("head (norm+linear)", 1, lambda b: (rand(b, N, D),), head_fwd, head_bwd),
        ("loss (cross-entropy)", 1,
         lambda b: (rand(b, K), backend.asarray(rng.integers(0, K, b))),
         cross_entropy_forward, lambda dout, cache: cross_entropy_backward(cache)),
    ]


def _chunk_sizes(model: ViT, B: int) -> list:
    """The batch pieces minivit's forward runs on its worker threads (one piece on the GPU)."""
    if backend.xp() is not np or not hasattr(model, "_chunks"):
        return [B]
    return [len(range(B)[s]) for s in model._chunks(B)]


def bench_layers(impl: MinivitBench, cfg: ViTConfig, args) -> list:
    """Forward and backward time of each layer on the shapes of a real step. Like the model, each
    batch piece runs on its own worker thread, timing its own calls there (no per-call thread
    hand-off); the slower piece's median counts. ms per step = median per call x calls per step."""
    model, sync = impl.model, impl.sync
    pmap = getattr(backend, "parallel_map", None) or (lambda f, items: [f(i) for i in items])
    sizes = _chunk_sizes(model, args.batch)
    rows = []
    for name, count, make, fwd, bwd in _layer_specs(cfg, model):
        def piece(b: int):
            """(forward ms, backward ms) medians of one piece of b images, on this thread."""
            inputs = make(b)
            out = fwd(*(a.copy() for a in inputs))[0]
            dout = (backend.asarray(np.random.default_rng(2).standard_normal(out.shape)
                                    .astype(out.dtype)) if hasattr(out, "shape") else None)
            t_f, t_b = [], []
            for rep in range(2 + args.layer_reps):        # 2 untimed
                ins = tuple(a.copy() for a in inputs)     # a forward may work in place
                d = None if dout is None else dout.copy() # a backward may consume dout and cache
                sync()
                t0 = time.perf_counter()
                _, cache = fwd(*ins)
                sync()
                t1 = time.perf_counter()
                bwd(d, cache)
                sync()
                t2 = time.perf_counter()
                if rep >= 2:
                    t_f.append((t1 - t0) * 1e3)
                    t_b.append((t2 - t1) * 1e3)
            return statistics.median(t_f), statistics.median(t_b)

        res = pmap(piece, sizes)
        f, b = max(r[0] for r in res), max(r[1] for r in res)
        rows.append({"what": "layers", "layer": name, "calls": count, "fwd_ms_call": f,
                     "bwd_ms_call": b, "fwd_ms": f * count, "bwd_ms": b * count,
                     "ms": (f + b) * count})
    try:
        from minivit.optim import AdamW
        opt = AdamW(model.params, lr=LR, weight_decay=WEIGHT_DECAY)
        t = statistics.median(time_ms(lambda: opt.step(model.grads), args.layer_reps, 2, sync))
        rows.append({"what": "layers", "layer": "AdamW step", "calls": 1, "fwd_ms_call": None,
                     "bwd_ms_call": None, "fwd_ms": None, "bwd_ms": None, "ms": t})
    except ImportError:
        print("note: minivit.optim.AdamW not found; no optimizer row", file=sys.stderr)
    total = sum(r["ms"] for r in rows)
    for r in rows:
        r["share"] = r["ms"] / total
    summary = {"what": "layers_total", "sum_ms": total, "chunks": sizes}
    if any(r["layer"] == "AdamW step" for r in rows):          # the real step, for comparison
        summary["train_step_ms"] = bench_step(impl, "train", cfg, args)["ms"]
    return rows + [summary]


def run_local(args, cfg: ViTConfig, whats: list) -> list:
    """Every measurement of one implementation in this process; returns the result records."""
    base = {"impl": args.impl, "config": args.config, "batch": args.batch,
            "device": args.device, "threads": args.threads}
    if args.impl == "torch":
        try:        # first, so that its OpenMP pool is limited and counted in rss_base
            import torch  # noqa: F401
        except ImportError:
            print("torch not installed; skipped", file=sys.stderr)
            return [{**base, "what": "skipped", "reason": "torch not installed"}]
    thread_info = limit_threads(args.threads, args.workers)
    rss_base = rss_now_mb()                               # after the imports, before the model
    impl = TorchBench(cfg, args) if args.impl == "torch" else MinivitBench(cfg, args)
    meta = {**base, "what": "meta", **impl.info(), **thread_info, "rss_base_mb": rss_base,
            "python": platform.python_version(), "cpu": _cpu_name(), "tf32": args.tf32,
            "wait_quiet_s": args.wait_quiet}
    records = [meta]
    for what in whats:
        if what == "layers" and args.impl == "torch":
            print("per-layer breakdown is minivit-only; skipped for torch", file=sys.stderr)
            continue
        waited = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else 0.0
        load = OtherLoad()
        if what == "peak":
            rs = [{"what": "peak", "n": args.peak_n,
                   "gflops": impl.matmul_peak(args.peak_n, args.peak_reps)}]
        elif what in ("train", "infer"):
            rs = [bench_step(impl, what, cfg, args)]
        else:
            rs = bench_layers(impl, cfg, args)
        others = load.cores()
        records += [{**base, **r, "other_cores": others, "waited_s": waited} for r in rs]
    peak = max((r["gflops"] for r in records if r["what"] == "peak"), default=args.peak_gflops)
    for r in records:
        if peak and r["what"] in ("train", "infer"):
            r["frac_peak"] = r["gflops"] / peak
    return records


class OtherLoad:
    """Cores kept busy by other processes since construction: every busy core (/proc/stat)
    minus this process's own CPU time (os.times, all its threads). None off Linux or when
    less than half a second has passed.
    Other work stalls BLAS/OpenMP threads badly, so each measurement records it."""

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat") as f:
                v = [int(t) for t in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        t = os.times()
        return sum(v), v[3] + v[4], t.user + t.system, time.perf_counter()

    def cores(self) -> float | None:
        end = self._snapshot()
        if end is None or self.start is None or end[3] - self.start[3] < 0.5:
            return None                                  # ticks are 10 ms: too short to tell
        total, idle = end[0] - self.start[0], end[1] - self.start[1]
        busy = (os.cpu_count() or 1) * (1 - idle / total)      # cores busy, this process included
        own = (end[2] - self.start[2]) / (end[3] - self.start[3])
        return max(0.0, busy - own)


QUIET = 0.15    # cores of other work below which the machine counts as idle


def wait_quiet(max_s: float) -> float:
    """Sleep until other processes keep fewer than QUIET cores busy (0.5 s samples), at most
    max_s seconds; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        load = OtherLoad()
        time.sleep(0.5)
        c = load.cores()
        if c is None or c < QUIET:
            break
    return time.perf_counter() - t0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---- --impl all: fresh processes, alternating ---------------------------------------------------
def child_command(args, impl: str, what: str) -> list:
    """The command line that measures `what` for `impl` in a fresh process (JSON output)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--impl", impl, "--what", what, "--json",
           "--config", args.config, "--batch", str(args.batch), "--threads", str(args.threads),
           "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--layer-reps", str(args.layer_reps), "--peak-n", str(args.peak_n),
           "--peak-reps", str(args.peak_reps), "--wait-quiet", str(args.wait_quiet)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    return cmd + ["--smoke"] * args.smoke + ["--tf32"] * args.tf32 + ["--torch-sdpa"] * args.torch_sdpa


def run_child(cmd: list, threads: int) -> list:
    """Run one measurement process with the thread variables set before its imports."""
    env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"benchmark process failed (exit {r.returncode}): {' '.join(cmd)}\n"
                         f"{r.stderr[-3000:]}")
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def run_all(args, cfg: ViTConfig, whats: list, emit) -> list:
    """Each (what, impl) in its own process; train/infer alternate minivit, torch for --rounds.
    Returns the per-round records followed by aggregates (medians) and ratios."""
    impls = list(IMPLS)
    if importlib.util.find_spec("torch") is None:
        print("torch not installed; skipped", file=sys.stderr)
        impls = ["minivit"]
    records = []

    def child(impl, what, rnd=None):
        recs = run_child(child_command(args, impl, what), args.threads)
        for r in recs:
            if rnd is not None:
                r["round"] = rnd
            emit(r)
        records.extend(recs)
        return recs

    if "peak" in whats:
        for impl in impls:
            child(impl, "peak")
    for what in (w for w in ("train", "infer") if w in whats):
        for rnd in range(args.rounds):
            for impl in impls:
                child(impl, what, rnd)
    if "layers" in whats:
        child("minivit", "layers")
    agg = aggregate(records, impls, args)
    for r in agg:
        emit(r)
    return records + agg


def aggregate(records: list, impls: list, args) -> list:
    """Median over rounds per (what, impl); ratio minivit/torch of images/s (= torch ms /
    minivit ms) per what; fraction of the machine peak (the best matmul peak measured)."""
    peaks = [r["gflops"] for r in records if r["what"] == "peak"]
    peak = max(peaks) if peaks else args.peak_gflops
    out = []
    for what in ("train", "infer"):
        ms = {}
        for impl in impls:
            rs = [r for r in records if r["what"] == what and r["impl"] == impl]
            if not rs:
                continue
            m = statistics.median(r["ms"] for r in rs)
            mem = {k: statistics.median(r[k] for r in rs)
                   for k in ("peak_rss_mb", "gpu_peak_mb") if k in rs[0]}
            flops = rs[0]["gflop_per_step"]
            a = {"what": what, "impl": impl, "aggregate": True, "config": args.config,
                 "batch": args.batch, "device": args.device, "threads": args.threads,
                 "rounds": len(rs), "ms_rounds": [r["ms"] for r in rs], "ms": m,
                 "images_per_s": args.batch / m * 1e3, "gflop_per_step": flops,
                 "gflops": flops / m * 1e3, **mem,
                 "other_cores_rounds": [r.get("other_cores") for r in rs]}
            if peak:
                a["frac_peak"] = a["gflops"] / peak
            out.append(a)
            ms[impl] = m
        if len(ms) == 2:
            out.append({"what": "ratio", "of": what, "aggregate": True,
                        "minivit_over_torch": ms["torch"] / ms["minivit"]})
    return out


# ---- the table ----------------------------------------------------------------------------------
def print_tables(records: list, args, cfg: ViTConfig) -> None:
    metas = [r for r in records if r["what"] == "meta"]
    print(f"config {args.config}: {cfg.image_size}x{cfg.image_size}x{cfg.in_channels}, patch "
          f"{cfg.patch_size}, dim {cfg.dim}, depth {cfg.depth}, heads {cfg.heads}, mlp "
          f"{cfg.mlp_ratio:g}, {cfg.num_classes} classes | batch {args.batch} | device "
          f"{args.device} | threads {args.threads}")
    print(f"forward {vit_flops(cfg, args.batch) / 1e9:.3f} GFLOP/batch (train 3x), matmuls only")
    seen = set()
    for m in metas:
        line = {k: m[k] for k in ("impl", "numpy", "torch", "backend", "params", "pools",
                                  "batch_pieces", "sdpa", "cpu") if k in m}
        key = json.dumps(line, sort_keys=True)
        if key not in seen:
            seen.add(key)
            print("  " + ", ".join(f"{k}={v}" for k, v in line.items()))
    others = [r["other_cores"] for r in records if r.get("other_cores") is not None]
    if others:
        print(f"  cores kept busy by other processes during the measurements: {min(others):.2f}"
              f"-{max(others):.2f} of {os.cpu_count()}")
        if max(others) > 2 * QUIET:
            print(f"  WARNING: other work ran during some measurements (> {2 * QUIET:.1f} cores); "
                  f"their times are inflated: rerun on an idle machine (see --wait-quiet)")
    for line in dict.fromkeys(f"{r['impl']}: {r['reason']}; skipped" for r in records
                              if r["what"] == "skipped"):
        print(line)

    peaks = [r for r in records if r["what"] == "peak"]
    for r in peaks:
        print(f"float32 matmul peak ({r['impl']}, n={r['n']}, median of {args.peak_reps}): "
              f"{r['gflops']:.1f} GFLOP/s")
    peak = max((r["gflops"] for r in peaks), default=args.peak_gflops)

    rows = [r for r in records if r["what"] in ("train", "infer")
            and (r.get("aggregate") or args.impl != "all")]
    if rows:
        mem_key = "gpu_peak_mb" if args.device == "gpu" else "peak_rss_mb"
        mem_name = "GPU peak MB" if args.device == "gpu" else "max RSS MB"
        print()
        print(f"{'what':6} {'impl':8} {'ms/step':>9} {'img/s':>9} {'GFLOP/s':>8} {'of peak':>8} "
              f"{mem_name:>11}  rounds (ms) [cores used by others]")
        for r in rows:
            fp = f"{r['gflops'] / peak:.0%}" if peak else "-"
            o = r.get("other_cores_rounds", [r.get("other_cores")])
            rounds = " ".join(f"{v:.2f}" for v in r.get("ms_rounds", [r["ms"]]))
            rounds += " [" + " ".join("?" if c is None else f"{c:.1f}" for c in o) + "]"
            mem = r.get(mem_key)
            print(f"{r['what']:6} {r['impl']:8} {r['ms']:9.2f} {r['images_per_s']:9.0f} "
                  f"{r['gflops']:8.1f} {fp:>8} {mem if mem is None else round(mem):>11}  {rounds}")
        for r in records:
            if r["what"] == "ratio":
                print(f"{r['of']}: minivit/torch throughput = {r['minivit_over_torch']:.2f}x "
                      f"(medians of {args.rounds} alternating rounds)")

    layers = [r for r in records if r["what"] == "layers"]
    if layers:
        print()
        print(f"minivit per-layer breakdown, ms per step (median of {args.layer_reps} calls x "
              f"calls per step)")
        w = max(22, max(len(r["layer"]) for r in layers))          # name column width
        print(f"{'layer':{w}} {'calls':>5} {'fwd ms':>8} {'bwd ms':>8} {'total':>8} {'share':>6}")
        fmt = lambda v: f"{v:8.3f}" if v is not None else f"{'-':>8}"
        for r in layers:
            print(f"{r['layer']:{w}} {r['calls']:5d} {fmt(r['fwd_ms'])} {fmt(r['bwd_ms'])} "
                  f"{r['ms']:8.3f} {r['share']:6.1%}")
        for t in (r for r in records if r["what"] == "layers_total"):
            print(f"{'sum of layers':{w}} {'':5} {'':8} {'':8} {t['sum_ms']:8.3f}")
            if "train_step_ms" in t:
                print(f"{'measured train step':{w}} {'':5} {'':8} {'':8} {t['train_step_ms']:8.3f}"
                      f"  (difference: residual adds, cls/pos, grad sums, last block's "
                      f"CLS-only saving)")
            print(f"batch pieces on worker threads: {t['chunks']}")


# ---- command line -------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default=None,
                    help="model shape (default mnist; tiny with --smoke)")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default 128)")
    ap.add_argument("--threads", type=int, default=2,
                    help="BLAS/OpenMP threads (torch.set_num_threads too) (default 2)")
    ap.add_argument("--workers", type=int, default=None,
                    help="minivit batch-split worker threads (default: --threads)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 30)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternating A B rounds with --impl all (default 3)")
    ap.add_argument("--impl", choices=IMPLS + ("all",), default="minivit")
    ap.add_argument("--what", default=None,
                    help="comma list of train, infer, layers, peak, or all (default train)")
    ap.add_argument("--layer-reps", type=int, default=None, help="calls per layer timing (30)")
    ap.add_argument("--peak-n", type=int, default=None,
                    help="matmul size for the peak (2048 CPU, 8192 GPU)")
    ap.add_argument("--peak-reps", type=int, default=None, help="peak matmul repetitions (10)")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="known float32 peak for 'of peak' when --what has no peak")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="S",
                    help="before each measurement wait up to S seconds until other processes "
                         "use < 0.15 cores (60; 0 with --smoke; 0 turns it off)")
    ap.add_argument("--tf32", action="store_true",
                    help="TF32 matmuls on the GPU (torch.backends.cuda.matmul.allow_tf32)")
    ap.add_argument("--torch-sdpa", action="store_true",
                    help="torch reference uses F.scaled_dot_product_attention")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model, 3 steps, every part: checks the script in seconds")
    ap.add_argument("--json", action="store_true", help="one JSON line per result, no table")
    args = ap.parse_args(argv)
    s = args.smoke
    gpu = args.device == "gpu"
    defaults = dict(config="tiny" if s else "mnist", batch=32 if s else 128,
                    steps=3 if s else 30, warmup=1 if s else 5, rounds=1 if s else 3,
                    what="all" if s else "train", layer_reps=3 if s else 30,
                    peak_n=256 if s else (8192 if gpu else 2048), peak_reps=3 if s else 10,
                    wait_quiet=0.0 if s else 60.0)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for k in ("batch", "threads", "steps", "rounds", "layer_reps", "peak_n", "peak_reps"):
        if getattr(args, k) < 1:
            raise SystemExit(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    return args


def parse_whats(text: str) -> list:
    asked = {w.strip() for w in text.split(",") if w.strip()}
    bad = asked - set(WHATS) - {"all"}
    if bad or not asked:
        raise SystemExit(f"--what {text!r}: unknown {sorted(bad)}; use a comma list of "
                         f"{', '.join(WHATS)} or all")
    return [w for w in WHATS if w in asked or "all" in asked]


def main(argv=None) -> list:
    """Run the benchmarks the arguments ask for; print the table (or JSON lines) and return the
    result records."""
    args = parse_args(argv)
    cfg = ViTConfig(**CONFIGS[args.config])
    whats = parse_whats(args.what)
    if args.config == "vit-b16" and args.device == "cpu" and not args.json:
        print("note: vit-b16 on the CPU is slow (~35 GFLOP per image forward); "
              "consider --device gpu or a small --batch", file=sys.stderr)
    emit = (lambda r: print(json.dumps(r), flush=True)) if args.json else (lambda r: None)
    if args.impl == "all":
        records = run_all(args, cfg, whats, emit)
    else:
        records = run_local(args, cfg, whats)
        for r in records:
            emit(r)
    if not args.json:
        print_tables(records, args, cfg)
    return records


if __name__ == "__main__":
    main()
