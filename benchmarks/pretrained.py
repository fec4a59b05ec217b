"""ViT-B/16 inference on the same weights: minivit loading a transformers checkpoint folder
against transformers itself (PyTorch eager, sdpa attention), each in its own process,
alternating, medians.

    python benchmarks/pretrained.py                      # batch 8 and batch 1, 2 rounds
    python benchmarks/pretrained.py --batch 8 --rounds 3
    python benchmarks/pretrained.py --json               # keep the results (benchmarks/results/)

The checkpoint is google/vit-base-patch16-224's architecture (transformers' ViTConfig defaults,
1000 classes) with random weights, written once by transformers' save_pretrained into a
temporary folder: what a user who downloaded the real one runs, minus the download. minivit
computes the exact GELU there, as transformers does (SciPy's erf when installed). Needs torch,
transformers and safetensors.

With --json (or --results FILE) every measurement is stamped (stamp.py) and appended as it is
measured: one record per process and round (config "vit-b16-hf", impl minivit or
transformers), then per batch the medians and the ratio minivit/transformers of images/s.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import stamp  # benchmarks/ is not a package: the script's folder is on the path

CONFIG = "vit-b16-hf"      # google/vit-base-patch16-224's architecture: exact GELU, eps 1e-12

def make_checkpoint(folder: str) -> None:
    import torch
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(num_labels=1000)).save_pretrained(folder)


def measure(impl: str, folder: str, batch: int, steps: int, warmup: int) -> dict:
    """ms per forward of `batch` 224 x 224 images (median of `steps` after `warmup`)."""
    import numpy as np
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    if impl == "minivit":
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from minivit.io import load_pretrained
        model = load_pretrained(folder)
        step = lambda: model.forward(x)                                  # noqa: E731
    else:
        import torch
        from transformers import ViTForImageClassification
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        model = ViTForImageClassification.from_pretrained(folder, attn_implementation="sdpa")
        model.eval()
        xt = torch.from_numpy(x)

        def step():
            with torch.no_grad():
                return model(pixel_values=xt).logits
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        step()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    ms = statistics.median(times)
    return {"what": "infer", "impl": impl, "config": CONFIG, "batch": batch, "device": "cpu",
            "threads": int(os.environ.get("OMP_NUM_THREADS", "2")), "ms": ms,
            "ms_min": min(times), "ms_max": max(times), "steps": steps, "warmup": warmup,
            "ms_all": [round(t, 4) for t in times], "images_per_s": batch / ms * 1e3,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10}


def run_child(args, impl: str, folder: str, batch: int, env: dict) -> dict:
    """One measurement in a fresh process; its stamped record (or a "failed" record)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, folder, "--batch",
           str(batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        print(f"{impl} batch {batch}: process failed (exit {out.returncode})\n"
              f"{out.stderr[-3000:]}", file=sys.stderr)
        return {"what": "failed", "of": "infer", "impl": impl, "config": CONFIG, "batch": batch,
                "device": "cpu", "exit": out.returncode, "error": out.stderr[-1500:]}
    r = json.loads(lines[-1])
    r["child_command"] = r.pop("command", "").replace(folder, "CHECKPOINT")   # a temporary folder
    return r


def aggregate(rounds: list, batch: int, threads: int) -> list:
    """Medians per implementation and the ratio minivit/transformers of images/s."""
    out, ms = [], {}
    for impl in ("minivit", "transformers"):
        rs = [r for r in rounds if r["what"] == "infer" and r["impl"] == impl]
        if not rs:
            continue
        m = statistics.median(r["ms"] for r in rs)
        ms[impl] = m
        out.append({"what": "infer", "impl": impl, "config": CONFIG, "batch": batch,
                    "device": "cpu", "threads": threads, "aggregate": True, "rounds": len(rs),
                    "ms_rounds": [r["ms"] for r in rs], "ms": m, "steps": rs[0]["steps"],
                    "images_per_s": batch / m * 1e3,
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
                    "machine": rs[0].get("machine"),
                    "versions": {k: v for r in rs for k, v in r.get("versions", {}).items()}})
    if len(ms) == 2:
        out.append({"what": "ratio", "of": "infer", "config": CONFIG, "batch": batch,
                    "device": "cpu", "threads": threads, "aggregate": True,
                    "minivit_over_transformers": ms["transformers"] / ms["minivit"]})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 1])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true",
                    help="append every record, stamped, to benchmarks/results/<machine tag>.jsonl")
    ap.add_argument("--results", default=None, metavar="FILE",
                    help="append the records to FILE instead (implies --json)")
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        r = measure(args.child[0], args.child[1], args.batch[0], args.steps, args.warmup)
        print(json.dumps(stamp.stamp(r, "pretrained.py")))
        return 0
    sink = stamp.Sink(args.results, "pretrained.py") if args.json or args.results else None
    keep = sink.write if sink else (lambda r: r)
    env = stamp.child_env({**os.environ,
                           **{v: str(args.threads) for v in stamp.THREAD_VARS}})
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        make_checkpoint(folder)
        for batch in args.batch:
            rounds = []
            for rnd in range(args.rounds):
                for impl in ("minivit", "transformers"):
                    r = run_child(args, impl, folder, batch, env)
                    r["round"] = rnd
                    rounds.append(keep(r))
                    failed |= r["what"] == "failed"
            agg = [keep(r) for r in aggregate(rounds, batch, args.threads)]
            m = {r["impl"]: r["ms"] for r in agg if r["what"] == "infer"}
            ms = {impl: [r["ms"] for r in rounds if r["impl"] == impl and r["what"] == "infer"]
                  for impl in ("minivit", "transformers")}
            if len(m) < 2:
                print(f"batch {batch}: measured {sorted(m) or 'nothing'} (rounds: {ms})")
                continue
            print(f"batch {batch}: minivit {m['minivit']:.0f} ms ({batch / m['minivit'] * 1e3:.2f} "
                  f"images/s), transformers {m['transformers']:.0f} ms "
                  f"({batch / m['transformers'] * 1e3:.2f} images/s): minivit/transformers "
                  f"{m['transformers'] / m['minivit']:.2f}x  (rounds: {ms})")
    if sink:
        sink.close()
        print(f"records appended to {os.path.relpath(sink.path)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
