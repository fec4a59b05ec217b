"""Drawing attention maps: a PNG grid with one row per image (the input, each layer's CLS
attention, the rollout), and the same numbers as text for a terminal. Needs matplotlib for the
PNG (the `plot` extra); without it a note is printed and no file is written."""
from __future__ import annotations

import numpy as np

from ..files import save_figure
from .attention import upsample


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
    """Write the grid PNG (atomically: files.WriteError, naming path, when it cannot be
    written); False, with a note, when matplotlib is missing."""
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
    save_figure(fig, path)
    return True
