"""The matrix products of one forward pass alone, in NumPy or in torch: how much of a step's time
the library's BLAS sets, for each side of bench.py's comparisons.

    python benchmarks/matmuls.py --config dinov2-b14 --image-size 518 --batch 4
    python benchmarks/matmuls.py --config dinov2-b14 --image-size 518 --batch 4 --lib torch
    python benchmarks/matmuls.py --config vit-b16 --batch 8 --threads 1 --reps 3

Method: the products measure.vit_flops counts (every weight matrix over the rows it reads, and
attention's q k^T and a v of every head and image), with float32 random operands of their
shapes, each timed --reps times after one untimed call, in this one process at --threads
threads (run it once per library: BLAS and OpenMP read their thread counts when they load).
The forward's total is the sum of each product's median times how often the forward runs it.
Attention's products are timed whole, (B H) x (N, Dh) @ (Dh, N) and (N, N) @ (N, Dh), not in
the tiles a streamed or flash kernel cuts them into. A step's time (bench.py) minus this total
is what its implementation spends outside the library's matrix products: elementwise passes,
copies, waiting. The forward only: inference steps are a forward, and a training step's
products are the same shapes transposed (three per forward product).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections import Counter

import stamp  # benchmarks/ is not a package; stamp loads no NumPy


def products(cfg, batch: int) -> Counter:
    """{(name, batch_dims, M, K, N): times} of one forward of `batch` images: each weight
    (Din, Dout) as a (rows, Din) @ (Din, Dout) product over the rows measure.vit_flops gives it
    (patches, tokens, or one pooled row per image), and per block attention's two per head:
    q k^T (N, Dh) @ (Dh, N) and a v (N, N) @ (N, Dh), batched over images and heads."""
    found = Counter()
    N, heads = cfg.num_tokens, cfg.heads
    for key, shape in cfg.param_shapes().items():
        if len(shape) != 2:
            continue
        rows = (cfg.num_patches if key == "patch_embed.w" else
                N if key.startswith("blocks.") else 1)
        name = key.split(".", 2)[-1] if key.startswith("blocks.") else key
        found[(name, 1, batch * rows, shape[0], shape[1])] += 1
    Dh = cfg.dim // heads
    found[("attention q k^T", batch * heads, N, Dh, N)] += cfg.depth
    found[("attention a v", batch * heads, N, N, Dh)] += cfg.depth
    return found


def flops(found: Counter) -> int:
    """2 M K N per product, each as often as it runs."""
    return sum(2 * b * M * K * N * times for (_, b, M, K, N), times in found.items())


def timer(lib: str, threads: int):
    """time_product(b, M, K, N, reps) -> median seconds of one (b, M, K) @ (b, K, N) float32
    product into a preallocated output, in `lib` (numpy or torch)."""
    import numpy as np
    rng = np.random.default_rng(0)
    if lib == "torch":
        import torch
        torch.set_num_threads(threads)
        to, matmul = torch.from_numpy, torch.matmul
    else:
        to, matmul = (lambda a: a), np.matmul

    def time_product(b: int, M: int, K: int, N: int, reps: int) -> float:
        a = to(rng.standard_normal((b, M, K), dtype=np.float32))
        w = to(rng.standard_normal((b, K, N), dtype=np.float32))
        out = to(np.empty((b, M, N), dtype=np.float32))
        matmul(a, w, out=out)                             # untimed: pages, packing buffers
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            matmul(a, w, out=out)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    return time_product


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="dinov2-b14", help="a bench.py --config (default "
                    "dinov2-b14)")
    ap.add_argument("--image-size", type=int, default=None, metavar="S",
                    help="images of S x S pixels (any size the patch divides)")
    ap.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    ap.add_argument("--lib", choices=("numpy", "torch"), default="numpy")
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per product (default 5)")
    args = ap.parse_args(argv)
    for flag in ("batch", "threads", "reps"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.lib == "torch" and importlib.util.find_spec("torch") is None:
        ap.error("--lib torch: torch is not installed (pip install -e '.[torch]')")
    for var in stamp.THREAD_VARS:                         # BLAS and OpenMP read them on loading
        os.environ[var] = str(args.threads)
    import bench                                          # NumPy loads after the variables
    import measure                                        # (benchmarks/ is not a package)
    if args.config not in bench.CONFIGS:
        ap.error(f"--config {args.config}: not one of {', '.join(sorted(bench.CONFIGS))}")
    cfg = bench.bench_config(args.config, args.image_size)
    found = products(cfg, args.batch)
    assert flops(found) == measure.vit_flops(cfg, args.batch)   # the count bench.py divides by
    time_product = timer(args.lib, args.threads)
    label = bench.config_label(args.config, args.image_size)
    print(f"{label}, batch {args.batch}, {cfg.num_tokens} tokens: the forward's matrix products "
          f"in {args.lib}, float32, {args.threads} thread(s), median of {args.reps}")
    print(f"{'product':24s} {'(b) M x K x N':>24s} {'times':>5s} {'ms each':>9s} "
          f"{'GFLOP/s':>8s} {'ms in all':>9s}")
    total = 0.0
    for (name, b, M, K, N), times in found.items():
        seconds = time_product(b, M, K, N, args.reps)
        total += seconds * times
        shape = f"({b}) {M} x {K} x {N}" if b > 1 else f"{M} x {K} x {N}"
        print(f"{name:24s} {shape:>24s} {times:5d} {1e3 * seconds:9.2f} "
              f"{2 * b * M * K * N / seconds / 1e9:8.1f} {1e3 * seconds * times:9.1f}")
    print(f"forward's products: {1e3 * total:.1f} ms, {flops(found) / total / 1e9:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
