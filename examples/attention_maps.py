"""Attention maps of a trained minivit on MNIST test images, as a PNG grid.

    python examples/attention_maps.py --checkpoint runs/mnist/best.npz --out attention.png
    python examples/attention_maps.py --quick            # tiny random model, synthetic digits

One row per image: the input, then each layer's CLS-token attention (mean over heads, the CLS
query row over the patches, upsampled to the image) and the attention rollout over all layers
(Abnar & Zuidema 2020; minivit.attention_maps). Every map is min-max scaled for display.
Without matplotlib the numbers are printed and no PNG is written.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from minivit import ViT, ViTConfig, backend
from minivit.attention_maps import attention_maps, upsample
from minivit.data import MNIST_MEAN, MNIST_STD, normalize


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Draw per-layer CLS attention and attention rollout "
                                             "for a few MNIST test images.")
    ap.add_argument("--checkpoint", default=None, help="a trained minivit checkpoint (.npz)")
    ap.add_argument("--data", default=None, help="folder with the MNIST files (default: cache)")
    ap.add_argument("--num-images", type=int, default=6)
    ap.add_argument("--out", default="attention.png", help="the PNG to write")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: a tiny random model (unless --checkpoint) and at most 3 "
                         "synthetic images (unless --data)")
    return ap


def synthetic_digits(n: int, seed: int = 0) -> tuple:
    """n uint8 28x28 images with a bright bar in row band k for class k, and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, 1, 28, 28)).astype(np.uint8)          # (n, 1, 28, 28)
    for i, k in enumerate(y):
        x[i, 0, 2 + 2 * k:4 + 2 * k, 4:24] = 255
    return x, y


def load(args) -> tuple:
    """(model, uint8 images (M, C, S, S), labels (M,), mean, std, class names or None)."""
    if args.checkpoint:
        from minivit.checkpoint import load_checkpoint
        meta = load_checkpoint(args.checkpoint)
        model, extra = meta["model"], meta.get("extra") or {}
        mean = extra["mean"] if extra.get("mean") is not None else MNIST_MEAN
        std = extra["std"] if extra.get("std") is not None else MNIST_STD
        names = extra.get("class_names")
    elif args.quick:
        model = ViT(ViTConfig(image_size=28, patch_size=7, dim=16, depth=2, heads=2), seed=0)
        mean, std, names = MNIST_MEAN, MNIST_STD, None
    else:
        raise ValueError("pass --checkpoint FILE (a trained minivit checkpoint, e.g. "
                         "runs/mnist/best.npz), or --quick for a tiny random model")
    cfg = model.config
    if (cfg.image_size, cfg.in_channels) != (28, 1):
        raise ValueError(f"the model takes {cfg.image_size}x{cfg.image_size}x{cfg.in_channels} "
                         f"images, MNIST is 28x28x1; use a checkpoint trained on MNIST")
    n = min(args.num_images, 3) if args.quick else args.num_images
    if n < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    if args.quick and not args.data:
        x, y = synthetic_digits(n)
    else:
        from minivit.data import load_mnist
        _, _, x_test, y_test = load_mnist(args.data)
        x, y = x_test[:n, None], y_test[:n]                           # (n, 1, 28, 28)
    return model, x, np.asarray(y), mean, std, names


def print_numbers(res: dict, labels: np.ndarray, names) -> None:
    """Per image: label, prediction and the rollout CLS map (rows of the patch grid)."""
    name = (lambda i: str(names[i])) if names else str
    for i, (lab, p) in enumerate(zip(labels, res["probs"])):
        pred = int(p.argmax())
        print(f"image {i}: label {name(int(lab))}, predicted {name(pred)} ({p[pred]:.3f}); "
              f"CLS attention rollout over the {res['rollout'].shape[-1]}^2 patches:")
        for row in res["rollout"][i]:
            print("    " + " ".join(f"{v:.3f}" for v in row))
        peaks = [int(m.argmax()) for m in res["layers"][i]]
        print(f"    most-attended patch per layer (row-major): {peaks}")


def render(x: np.ndarray, labels: np.ndarray, res: dict, path: str, names=None) -> bool:
    """Write the grid PNG (atomically); False, with a note, when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install -e .[plot] to get it)")
        return False
    M, L = res["layers"].shape[:2]
    S = x.shape[-1]
    name = (lambda i: str(names[i])) if names else str
    fig, axes = plt.subplots(M, L + 2, figsize=(1.6 * (L + 2), 1.7 * M), squeeze=False)
    for i in range(M):
        img = x[i, 0] if x.shape[1] == 1 else np.moveaxis(x[i], 0, -1)  # (S, S) or (S, S, 3)
        maps = upsample(np.concatenate([res["layers"][i], res["rollout"][i][None]]), S)
        titles = [f"layer {l + 1}" for l in range(L)] + ["rollout"]
        axes[i, 0].imshow(img, cmap="gray")
        axes[i, 0].set_title(f"{name(int(labels[i]))} -> {name(int(res['probs'][i].argmax()))}",
                             fontsize=8)
        for j, (m, t) in enumerate(zip(maps, titles), start=1):
            m = (m - m.min()) / max(m.max() - m.min(), 1e-12)         # (S, S) in [0, 1]
            axes[i, j].imshow(img, cmap="gray")
            axes[i, j].imshow(m, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(t, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"                                               # same folder: atomic rename
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    backend.use(args.device)
    model, x, y, mean, std, names = load(args)
    res = attention_maps(model, normalize(backend.asarray(x), model.config.dtype, mean, std))
    print_numbers(res, y, names)
    wrote = render(x, y, res, args.out, names)
    if wrote:
        print(f"wrote {args.out}")
    return {**res, "labels": y, "out": args.out if wrote else None}


if __name__ == "__main__":
    from minivit.cli import run
    run(main)
