"""ViT-B/16 inference on the same weights: minivit loading a transformers checkpoint folder
against transformers itself (PyTorch eager, sdpa attention), each in its own process,
alternating, medians.

    python benchmarks/pretrained.py                      # batch 8 and batch 1, 2 rounds
    python benchmarks/pretrained.py --batch 8 --rounds 3

The checkpoint is google/vit-base-patch16-224's architecture (transformers' ViTConfig defaults,
1000 classes) with random weights, written once by transformers' save_pretrained into a
temporary folder: what a user who downloaded the real one runs, minus the download. minivit
computes the exact GELU there, as transformers does (SciPy's erf when installed). Needs torch,
transformers and safetensors.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


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
    return {"impl": impl, "batch": batch, "ms": statistics.median(times), "ms_all": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 1])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.batch[0], args.steps,
                                 args.warmup)))
        return
    env = {**os.environ, **{v: str(args.threads) for v in THREAD_VARS}}
    with tempfile.TemporaryDirectory() as folder:
        make_checkpoint(folder)
        for batch in args.batch:
            ms = {"minivit": [], "transformers": []}
            for _ in range(args.rounds):
                for impl in ms:
                    out = subprocess.run([sys.executable, __file__, "--child", impl, folder,
                                          "--batch", str(batch), "--steps", str(args.steps),
                                          "--warmup", str(args.warmup)], env=env,
                                         capture_output=True, text=True, check=True)
                    ms[impl].append(json.loads(out.stdout.strip().splitlines()[-1])["ms"])
            m = {k: statistics.median(v) for k, v in ms.items()}
            print(f"batch {batch}: minivit {m['minivit']:.0f} ms ({batch / m['minivit'] * 1e3:.2f} "
                  f"images/s), transformers {m['transformers']:.0f} ms "
                  f"({batch / m['transformers'] * 1e3:.2f} images/s): minivit/transformers "
                  f"{m['transformers'] / m['minivit']:.2f}x  (rounds: {ms})")


if __name__ == "__main__":
    main()
