"""Where streamed attention (minivit/kernels/streamed.py) overtakes the keys-first kernel
(minivit/kernels/attention.py): one attention core (no qkv or output projection) at width D and
H heads, forward alone and a training step (forward + backward), for each batch and token count.
The measurement behind kernels.STREAMED_MIN_TOKENS; its train rows list the bytes of
probabilities the keys-first kernel keeps over the model's depth, the memory streaming saves.

    python benchmarks/streamed_crossover.py                        # D=768, H=12, B 1..4
    python benchmarks/streamed_crossover.py --batch 1 --tokens 577 1370 --rounds 7
    python benchmarks/streamed_crossover.py --block-q 64 --block-k 512   # other block sizes
    python benchmarks/streamed_crossover.py --block-h 12 --block-q 172 --block-k 229  # every head
                                                                    # of an image in one tile
    python benchmarks/streamed_crossover.py --memory               # peak forward memory too

Method: float32 random qkv; every round times keys-first, then streamed, then (the other way
round) streamed, then keys-first again, each the median of --reps calls, so that a machine
shared with other work slows both alike; the table holds the median over --rounds of each and
their ratio (keys-first time / streamed time: above 1, streamed is faster). A training step is
timed as a model runs it: --depth forwards whose caches all stay alive (the keys-first kernel
keeps each layer's (B, H, N, N) probabilities, the streamed one a log-sum-exp per row), then
the backwards in reverse; the table gives it per layer. The allocator is tuned as the commands
tune it (threads.Runtime.apply). --memory adds the peak of memory allocated during one forward
(tracemalloc, which NumPy reports its arrays to).
BLAS threads: --threads (set before NumPy loads). On a machine shared with other work,
--threads 1 --clock cpu counts only this process's own time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import stamp  # benchmarks/ is not a package; stamp loads no NumPy


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--tokens", type=int, nargs="+",
                    default=[197, 257, 401, 577, 785, 1025, 1370])
    ap.add_argument("--what", nargs="+", choices=("forward", "train"), default=["forward", "train"])
    ap.add_argument("--depth", type=int, default=12,
                    help="train: this many forwards, their caches all kept, then as many "
                         "backwards, as in a model of this depth (default 12, ViT-B's)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
    ap.add_argument("--reps", type=int, default=3, help="calls per timing (median)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time, which time slices "
                         "given to other work do not count in (meaningful with --threads 1)")
    ap.add_argument("--block-q", type=int, default=None, help="streamed query block (default: "
                    "streamed.block_sizes)")
    ap.add_argument("--block-k", type=int, default=None, help="streamed key block")
    ap.add_argument("--block-h", type=int, default=None, help="streamed heads per tile")
    ap.add_argument("--memory", action="store_true", help="peak forward memory (tracemalloc)")
    return ap.parse_args(argv)


def timed(fn, reps: int, clock=time.perf_counter) -> float:
    """Median seconds of reps calls of fn() by clock()."""
    ts = []
    for _ in range(reps):
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    return statistics.median(ts)


def peak_bytes(fn) -> int:
    """Peak bytes allocated (tracemalloc) while fn() runs, above what was allocated before."""
    import tracemalloc
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def kernels(args) -> dict:
    """name -> (forward(qkv) -> (out, cache), backward(dout, cache)) of the two kernels."""
    from minivit.kernels import attention as keys_first
    from minivit.kernels import streamed
    blocks = dict(block_q=args.block_q, block_k=args.block_k, block_h=args.block_h)
    return {"keys-first": (lambda qkv: keys_first.attention_forward(qkv, args.heads),
                           keys_first.attention_backward),
            "streamed": (lambda qkv: streamed.attention_forward(qkv, args.heads, **blocks),
                         streamed.attention_backward)}


def measure(args, impls: dict, what: str, B: int, N: int) -> str:
    """One row of the table: both kernels' median ms (per layer for train), their ratio, and
    the memory column."""
    import numpy as np
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((B, N, 3 * args.dim), dtype=np.float32)    # (B, N, 3D)
    dout = rng.standard_normal((B, N, args.dim), dtype=np.float32)       # (B, N, D)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def step(name):
        fwd, bwd = impls[name]
        if what == "forward":
            return lambda: fwd(qkv)

        def train():                                      # the caches of `depth` layers alive
            caches = [fwd(qkv)[1] for _ in range(args.depth)]
            while caches:
                bwd(dout, caches.pop())
        return train

    for name in impls:                                    # warm up: allocator, BLAS threads
        step(name)()
    ms = {name: [] for name in impls}
    for r in range(args.rounds):
        order = list(impls) if r % 2 == 0 else list(impls)[::-1]
        for name in order + order[::-1]:
            ms[name].append(timed(step(name), args.reps, clock) * 1e3)
    per = args.depth if what == "train" else 1            # train: per layer
    a, b = (statistics.median(ms[name]) / per for name in impls)
    line = f"{what:8} {B:2d} {N:5d} {a:14.1f} {b:12.1f} {a / b:6.2f}"
    if what == "train":                                   # what the keys-first kernel keeps
        return line + f"  {args.depth * B * args.heads * N * N * 4 / 2 ** 20:.0f}"
    if args.memory:
        mb = [peak_bytes(step(name)) / 2 ** 20 for name in impls]
        line += f"  {mb[0]:.1f} / {mb[1]:.1f}"
    return line


def main(argv=None) -> None:
    args = parse_args(argv)
    for var in stamp.THREAD_VARS:
        os.environ[var] = str(args.threads)
    from minivit.parallel import threads                  # NumPy loads after the variables
    threads.Runtime.from_env().apply()                    # the allocator as the commands run it
    impls = kernels(args)
    print(f"one attention core, D={args.dim}, H={args.heads}, float32, {args.threads} BLAS "
          f"thread(s), {args.clock} clock; median of {args.rounds} alternating rounds of "
          f"{args.reps} calls; train: ms per layer of {args.depth} layers' forwards then "
          f"backwards; ratio = keys-first ms / streamed ms (> 1: streamed faster)")
    head = f"{'what':8} {'B':>2} {'N':>5} {'keys-first ms':>14} {'streamed ms':>12} {'ratio':>6}"
    print(head + "  train: MiB of probabilities keys-first keeps over the depth"
          + ("; forward: peak MiB keys-first / streamed" if args.memory else ""))
    for what in args.what:
        for B in args.batch:
            for N in args.tokens:
                print(measure(args, impls, what, B, N), flush=True)


if __name__ == "__main__":
    sys.exit(main())
