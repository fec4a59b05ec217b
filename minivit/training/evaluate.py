"""Evaluation: logits, predictions and probabilities of uint8 images in batches; accuracy,
top-k accuracy, per-class accuracy and the confusion matrix (as a table, or in a compact form
for many classes); and match_classes, which pairs an image folder's class names with a model's
outputs."""
from __future__ import annotations

import difflib
import re

import numpy as np

from .. import backend
from ..data.batches import normalize
from ..errors import UserError


def logits_of(model, images: np.ndarray, batch_size: int = 500, mean=None,
              std=None) -> np.ndarray:
    """Host logits (M, K) of uint8 images (M, H, W) or (M, C, H, W), in eval mode, in batches.
    mean/std default to the model's Preprocessing."""
    mean, std = _normalization(model, mean, std)
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(backend.asarray(images[i:i + batch_size]), model.config.dtype, mean, std)
        out.append(backend.to_numpy(model.forward(x)))                     # (b, K)
    return np.concatenate(out) if out else np.zeros((0, model.config.num_classes))


def predict(model, images: np.ndarray, batch_size: int = 500, mean=None, std=None) -> np.ndarray:
    """Class predictions (M,) for uint8 images (M, H, W) or (M, C, H, W), in eval mode."""
    return logits_of(model, images, batch_size, mean, std).argmax(1)


def predict_probs(model, images: np.ndarray, batch_size: int = 64, mean=None,
                  std=None) -> np.ndarray:
    """Class probabilities (M, K) of uint8 images, in eval mode."""
    return softmax(logits_of(model, images, batch_size, mean, std))


def _normalization(model, mean, std) -> tuple:
    """mean and std as given, else the model's Preprocessing; an error naming the fix if none."""
    pre = getattr(model, "preprocessing", None)
    if mean is None:
        mean = pre.mean if pre is not None else None
    if std is None:
        std = pre.std if pre is not None else None
    if mean is None or std is None:
        raise UserError("the model carries no preprocessing (mean and std of pixel / 255); "
                        "pass mean= and std= (--mean/--std), or use a checkpoint that records "
                        "them")
    return mean, std


def softmax(logits: np.ndarray) -> np.ndarray:
    """p = exp(z - max z) / sum exp(z - max z) per row, in float64 (host)."""
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)        # (M, K)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)                                  # (M, K)


def evaluate(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 500, mean=None,
             std=None, world=None) -> np.ndarray:
    """The confusion matrix (K, K) of the model on uint8 images with integer labels. With a
    world of several processes each predicts its own contiguous share of the images and the
    matrices are summed: exact counts, no sample padded or seen twice."""
    K = model.config.num_classes
    rank, size = (0, 1) if world is None else (world.rank, world.size)
    lo, hi = len(images) * rank // size, len(images) * (rank + 1) // size
    preds = predict(model, images[lo:hi], batch_size, mean, std)
    cm = confusion_matrix(labels[lo:hi], preds, K)                     # (K, K) int64
    if size > 1:
        world.allreduce_(cm)
    return cm


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[i, j] = how many samples of true class i were predicted as class j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels.astype(np.int64), preds.astype(np.int64)), 1)
    return cm


COMPACT_OVER = 20           # more classes than this: per-class accuracy and confused pairs
OTHER = "(other)"           # the column of predictions outside the evaluated classes


def topk_hits(scores: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """bool (M,): whether each row's target index is among its k highest scores (k capped at
    the number of columns; ties go to the lower index, as argmax breaks them)."""
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]      # (M, k)
    return (order == np.asarray(targets).astype(np.int64)[:, None]).any(1)


def report(cm: np.ndarray, class_names=None, pred_names=None, columns=None,
           compact_over: int = COMPACT_OVER, pairs: int = 10) -> str:
    """Accuracy, per-class accuracy and the confusion matrix as text.

    cm (n, K): cm[i, j] images of true class i predicted as output j; rows named by
    class_names, outputs by pred_names (default: class_names). columns[i] is the output that is
    correct for row i (default i: a square matrix). An evaluation on some of a model's classes
    (an image folder of 3 of ImageNet's 1000) prints the matrix over its own classes with one
    more column, '(other)', for predictions outside them, and lists the most confused pairs
    with the model's class names. Up to compact_over classes the matrix is printed whole;
    beyond it, the compact form: every class's accuracy, worst first, and the `pairs` most
    confused (true -> predicted) pairs."""
    cm = np.asarray(cm)
    n, K = cm.shape
    names = [str(c) for c in (class_names if class_names is not None else range(n))]
    preds = [str(c) for c in pred_names] if pred_names is not None else names
    cols = np.arange(n) if columns is None else np.asarray(columns, dtype=np.int64)
    hits = cm[np.arange(n), cols]                                        # (n,)
    per_class = hits / np.maximum(cm.sum(1), 1)
    total = cm.sum()
    lines = [f"accuracy {hits.sum() / max(total, 1):.4f} on {total} images"]
    square = K == n and (cols == np.arange(n)).all()
    if n > compact_over:
        lines[0] += f", {n} classes"
        lines.append("per-class accuracy (images), worst first:")
        order = np.argsort(per_class, kind="stable")
        cells = [f"{names[i]}: {per_class[i]:.4f} ({cm[i].sum()})" for i in order]
        lines += _packed(cells, 100)
    else:
        lines.append("per-class accuracy: " + "  ".join(f"{a}: {p:.4f}"
                                                        for a, p in zip(names, per_class)))
        shown = cm[:, cols]                                               # (n, n)
        heads = list(names)
        if not square:
            other = cm.sum(1) - shown.sum(1)                              # (n,)
            if K > n or other.any():
                shown = np.concatenate([shown, other[:, None]], axis=1)    # (n, n + 1)
                heads.append(OTHER)
        w = max(5, max(len(h) for h in heads) + 1, len(str(shown.max(initial=0))) + 1)
        lines += ["confusion matrix (rows: true class, columns: predicted):",
                  " " * w + "".join(h.rjust(w) for h in heads)]
        lines += [names[i].rjust(w) + "".join(str(v).rjust(w) for v in row)
                  for i, row in enumerate(shown)]
    if not square or n > compact_over:
        lines += _confused(cm, names, preds, cols, pairs)
    return "\n".join(lines)


def _packed(cells: list, width: int) -> list:
    """Cells joined by ' | ' into indented lines of at most about width characters, never
    breaking a cell."""
    lines, line = [], ""
    for c in cells:
        if line and len(line) + 3 + len(c) > width:
            lines.append("  " + line)
            line = c
        else:
            line = f"{line} | {c}" if line else c
    return lines + (["  " + line] if line else [])


def _confused(cm: np.ndarray, names: list, preds: list, cols: np.ndarray, pairs: int) -> list:
    """The `pairs` largest off-target cells of cm as 'true -> predicted: images (share)'."""
    wrong = cm.astype(np.int64).copy()
    wrong[np.arange(len(cols)), cols] = 0
    flat = np.argsort(-wrong, axis=None, kind="stable")[:pairs]
    rows, outs = np.unravel_index(flat, wrong.shape)
    found = [(i, j) for i, j in zip(rows, outs) if wrong[i, j] > 0]
    if not found:
        return []
    return ["most confused (true -> predicted: images, share of the true class):"] + [
        f"  {names[i]} -> {preds[j]}: {wrong[i, j]} ({wrong[i, j] / max(cm[i].sum(), 1):.1%})"
        for i, j in found]


# ---- a folder's classes and a model's outputs ----------------------------------------------
PLACEHOLDER = re.compile(r"(?:label|class)[ _]?(\d+)", re.IGNORECASE)


def _norm(name: str) -> str:
    """A class name compared loosely: lower case, '_' and '-' as spaces, spaces collapsed."""
    return " ".join(re.sub(r"[_\-]+", " ", name).lower().split())


def model_class_names(names, num_classes: int):
    """The model's class names when they name its outputs: one per output and not transformers'
    placeholders (LABEL_0, LABEL_1, ..., which a config without id2label gets); else None."""
    if names is None or len(names) != num_classes or not num_classes:
        return None
    if all((m := PLACEHOLDER.fullmatch(str(n))) and int(m.group(1)) == i
           for i, n in enumerate(names)):
        return None
    return [str(n) for n in names]


def match_classes(folder_names: list, model_names, num_classes: int, where: str = "the model",
                  folder: str = "the folder") -> list:
    """The model output of each of an image folder's classes (list of ints, one per folder
    class), or a ValueError that names every folder class it cannot place and the fix.

    With class names (model_class_names), a folder name matches the output of the same name;
    failing that, loosely (case, '_' and '-' ignored: 'tabby_cat' is 'Tabby cat'); failing that,
    one of a name's comma-separated synonyms (ImageNet's 'tabby, tabby cat' answers to 'tabby').
    A name that matches two outputs at its best level is ambiguous (an error). Without class
    names, the folders must be named by output index: '3' or 'class 3' (or 'class_3',
    'LABEL_3') for output 3."""
    names = model_class_names(model_names, num_classes)
    K = num_classes
    if names is None:
        out, bad = [], []
        for f in folder_names:
            m = PLACEHOLDER.fullmatch(f.strip()) or re.fullmatch(r"(\d+)", f.strip())
            i = int(m.group(1)) if m else -1
            (out.append(i) if 0 <= i < K else bad.append(f))
        if bad:
            raise UserError(
                f"{where} has no class names (no id2label / class_names), so the classes of "
                f"{folder} can only be matched to its {K} outputs by index; {_list(bad)} "
                f"{'is' if len(bad) == 1 else 'are'} not an index 0..{K - 1}: name the class "
                f"folders by output index ('0', '1', ... or 'class 0', ...), or evaluate a model "
                f"that names its classes")
        _check_distinct(folder_names, out, names, folder)
        return out
    exact: dict = {}
    loose: dict = {}
    synonym: dict = {}
    for i, n in enumerate(names):
        exact.setdefault(n, []).append(i)
        loose.setdefault(_norm(n), []).append(i)
        for part in n.split(","):
            if _norm(part):
                synonym.setdefault(_norm(part), []).append(i)
    out, unknown, ambiguous = [], [], []
    for f in folder_names:
        hit = exact.get(f) or loose.get(_norm(f)) or synonym.get(_norm(f))
        if not hit:
            unknown.append(f)
        elif len(set(hit)) > 1:
            ambiguous.append((f, sorted(set(hit))))
        else:
            out.append(hit[0])
    if unknown:
        hints = []
        for f in unknown[:5]:
            close = difflib.get_close_matches(_norm(f), list(loose), n=3, cutoff=0.6)
            if close:
                shown = ", ".join(repr(names[loose[c][0]]) for c in close)
                hints.append(f"{f!r}: did you mean {shown}?")
        some = ", ".join(repr(n) for n in names[:8]) + (f", ... ({K} in all)" if K > 8 else "")
        raise UserError(
            f"{len(unknown)} of the {len(folder_names)} classes of {folder} "
            f"{'is' if len(unknown) == 1 else 'are'} not among the {K} classes of {where}: "
            f"{_list(unknown)}" + (f" ({'; '.join(hints)})" if hints else "") +
            f"; its classes are {some}. Rename those class folders to the model's class names "
            f"(its id2label; case, '_' and '-' do not matter), or remove them")
    if ambiguous:
        shown = "; ".join(f"{f!r} matches outputs {', '.join(f'{i} ({names[i]!r})' for i in h)}"
                          for f, h in ambiguous[:5])
        raise UserError(f"class folder names of {folder} that match several outputs of "
                        f"{where}: {shown}; rename each folder to one output's full class "
                        f"name")
    _check_distinct(folder_names, out, names, folder)
    return out


def _check_distinct(folder_names: list, outputs: list, names, folder: str) -> None:
    """ValueError when two class folders stand for the same output."""
    seen: dict = {}
    for f, i in zip(folder_names, outputs):
        if i in seen:
            label = f" ({names[i]!r})" if names else ""
            raise UserError(f"class folders {seen[i]!r} and {f!r} of {folder} both stand for "
                            f"output {i}{label}; merge them into one folder")
        seen[i] = f


def _list(items: list, most: int = 20) -> str:
    """'a', 'b' and 3 more."""
    shown = ", ".join(repr(x) for x in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")
