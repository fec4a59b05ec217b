"""Drawing attention maps, and the same numbers as text for a terminal. Needs matplotlib for the
PNGs (the `plot` extra); without it a note is printed and no file is written.

    render(x, labels, res, path)          one PNG, a grid with one row per image: the input,
                                          each layer's CLS attention, the rollout (MNIST; and
                                          photos with titles=)
    render_image(img, res, i, path, t)    one PNG for one image, its panels wrapped into rows
                                          (a 12-layer model: 14 panels in 2 rows of 7)
    print_numbers(res, labels, names)     per image the prediction and the rollout grid

Every map is min-max scaled for display and drawn over the image the model saw (after its
resize and crop), bilinearly upsampled from the patch grid. Titles are shortened to fit their
panel. PNGs are written atomically (files.save_figure).
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..files import save_figure
from .attention import upsample

PANEL_CHARS = 22             # what fits on one line over a panel at fontsize 8
WRAP = 7                     # panels per row of a one-image PNG


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a note) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install -e .[plot] to get it)")
        return None
    return plt


def shorten(text: str, n: int = PANEL_CHARS) -> str:
    """text cut to n characters, an ellipsis marking the cut."""
    text = str(text)
    return text if len(text) <= n else text[:n - 1] + "\u2026"


def predicted(res: dict, i: int, names) -> str:
    """'label 0.61' of image i's top class, '' for a model without a head."""
    if res.get("probs") is None:
        return ""
    p = res["probs"][i]
    k = int(p.argmax())
    label = str(names[k]) if names is not None and k < len(names) else f"class {k}"
    return f"{label} {p[k]:.2f}"


def photo_title(path: str, res: dict, i: int, names, n: int = PANEL_CHARS) -> str:
    """The file name and, for a classifier, its top class: two lines that fit a panel."""
    pred = predicted(res, i, names)
    name = shorten(os.path.basename(path), n)
    return f"{name}\n{shorten(pred, n)}" if pred else name


def print_numbers(res: dict, labels, names, titles=None) -> None:
    """Per image: label (when known), prediction and the rollout CLS map (rows of the patch
    grid), and each layer's most-attended patch. titles: what to call each image (its path)."""
    name = (lambda i: str(names[i])) if names else str
    for i in range(len(res["rollout"])):
        head = f"image {i}" + (f" ({titles[i]})" if titles is not None else "")
        parts = [] if labels is None else [f"label {name(int(labels[i]))}"]
        if res.get("probs") is not None:
            p = res["probs"][i]
            pred = int(p.argmax())
            parts.append(f"predicted {name(pred)} ({p[pred]:.3f})")
        what = "CLS attention" if res.get("query", "cls") == "cls" else "mean patch attention"
        g = res["rollout"].shape[-1]
        print(f"{head}: " + ", ".join(parts) + ("; " if parts else "") +
              f"{what} rollout over the {g}^2 patches:")
        for row in res["rollout"][i]:
            print("    " + " ".join(f"{v:.3f}" for v in row))
        peaks = [int(m.argmax()) for m in res["layers"][i]]
        print(f"    most-attended patch per layer (row-major): {peaks}")


def _show(img: np.ndarray):
    """uint8 (C, S, S) -> what imshow takes: (S, S) gray or (S, S, 3)."""
    return img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)


def _overlay(ax, pic, m, title: str) -> None:
    """The image with one map (S, S), min-max scaled, over it."""
    m = (m - m.min()) / max(m.max() - m.min(), 1e-12)                # (S, S) in [0, 1]
    ax.imshow(pic, cmap="gray")
    ax.imshow(m, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
    if title:
        ax.set_title(title, fontsize=8)


def _maps(res: dict, i: int, S: int) -> np.ndarray:
    """Image i's layer maps then its rollout, upsampled: (L + 1, S, S)."""
    return upsample(np.concatenate([res["layers"][i], res["rollout"][i][None]]), S)


def _titles(L: int) -> list:
    return [f"layer {l + 1}" for l in range(L)] + ["rollout"]


def render(x: np.ndarray, labels, res: dict, path: str, names=None, titles=None) -> bool:
    """Write the grid PNG, one row per image (atomically: files.WriteError, naming path, when
    it cannot be written); False, with a note, when matplotlib is missing. The first panel of a
    row is titled `label -> prediction`, or titles[i] when given (photos: file name and top
    class)."""
    plt = pyplot()
    if plt is None:
        return False
    M, L = res["layers"].shape[:2]
    S = x.shape[-1]
    name = (lambda i: str(names[i])) if names else str
    tall = 2.0 if titles is not None else 1.7                         # room for 2-line titles
    fig, axes = plt.subplots(M, L + 2, figsize=(1.6 * (L + 2), tall * M), squeeze=False)
    for i in range(M):
        pic = _show(x[i])
        axes[i, 0].imshow(pic, cmap="gray")
        if titles is not None:
            first = titles[i]
        else:
            pred = f" -> {name(int(res['probs'][i].argmax()))}" if res.get("probs") is not None \
                else ""
            first = f"{name(int(labels[i]))}{pred}"
        axes[i, 0].set_title(first, fontsize=8)
        for j, (m, t) in enumerate(zip(_maps(res, i, S), _titles(L)), start=1):
            _overlay(axes[i, j], pic, m, t if i == 0 else "")
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)
    return True


def render_image(img: np.ndarray, res: dict, i: int, path: str, title: str) -> bool:
    """Write one image's PNG: the image as the model saw it, each layer's map and the rollout,
    WRAP panels a row, under a title (file name and top class). False, with a note, when
    matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    L = res["layers"].shape[1]
    S = img.shape[-1]
    panels = L + 2
    cols = min(panels, WRAP)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.1 * rows + 0.5), squeeze=False)
    axes = axes.ravel()
    pic = _show(img)
    axes[0].imshow(pic, cmap="gray")
    axes[0].set_title(f"input {S}x{S}", fontsize=8)
    for ax, m, t in zip(axes[1:], _maps(res, i, S), _titles(L)):
        _overlay(ax, pic, m, t)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle(shorten(title, 12 * cols), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return True
