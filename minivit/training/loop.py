"""The training loop.

    fit(model, data, opts, out_dir)   trains with AdamW (or SGD), warmup + cosine, clipping and
                                      label smoothing; evaluates after every epoch; writes
                                      last.npz, best.npz, metrics.jsonl, config.json, curves.png

Every file is written atomically (files.atomic_write), so a run killed at any moment leaves files
that load. metrics.jsonl is rewritten whole from the history kept in the checkpoints, after them:
on --resume it is rewritten from the resumed checkpoint, so it never repeats or misses an epoch.
A run starts by removing the temporary files a killed run left in its folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..data.batches import Dataset, iterate_batches
from ..files import atomic_write, clean_stale_temps
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..layers import cross_entropy_backward, cross_entropy_forward
from ..model import ViT
from ..optim import SGD, AdamW, clip_grad_norm, warmup_cosine
from .evaluate import confusion_matrix, predict, report
from .interrupt import GracefulInterrupt
from .plots import plot_curves


OUTPUTS = ("last.npz", "best.npz", "metrics.jsonl", "config.json", "curves.png")   # in out_dir


@dataclass
class TrainOptions:
    epochs: int = 12
    batch_size: int = 128
    optimizer: str = "adamw"          # 'adamw' or 'sgd'
    lr: float = 2e-3                  # peak learning rate, reached after the warmup
    min_lr: float = 1e-5              # learning rate at the end of the cosine
    weight_decay: float = 0.05        # decoupled (AdamW) or L2 (SGD); never on biases/norms/embeddings
    momentum: float = 0.9             # SGD only
    warmup_epochs: float = 1.0
    smoothing: float = 0.1            # label smoothing
    clip: float = 1.0                 # global gradient-norm clip; 0 disables
    augment: bool = True              # random shifts of up to 2 pixels
    seed: int = 0
    eval_batch_size: int = 500
    frozen: list = field(default_factory=list)   # parameter names the optimizer leaves alone


def make_optimizer(model: ViT, opts: TrainOptions):
    """The optimizer of opts over the model's params; weight decay on model.decay_keys() only."""
    frozen, decay = set(opts.frozen), model.decay_keys()
    if opts.optimizer == "adamw":
        return AdamW(model.params, lr=opts.lr, weight_decay=opts.weight_decay, frozen=frozen,
                     decay=decay)
    if opts.optimizer == "sgd":
        return SGD(model.params, lr=opts.lr, momentum=opts.momentum, nesterov=True,
                   weight_decay=opts.weight_decay, frozen=frozen, decay=decay)
    raise ValueError(f"unknown optimizer {opts.optimizer!r}; use 'adamw' or 'sgd'")


def batches(data: Dataset, opts: TrainOptions, epoch: int, start: int, dtype: str):
    """This epoch's shuffled training batches from index `start` on: (x (B, C, H, W), y (B,))."""
    pre = data.preprocessing
    return iterate_batches(data.x_train, data.y_train, opts.batch_size, shuffle=True,
                           seed=opts.seed, epoch=epoch, drop_last=True, augment=opts.augment,
                           dtype=dtype, mean=pre.mean, std=pre.std).batches(start)


def fit(model: ViT, data: Dataset, opts: TrainOptions, out_dir: str, resume: Optional[str] = None,
        run_config: Optional[dict] = None, quiet: bool = False) -> dict:
    """Train, evaluate after each epoch, keep last/best checkpoints and metrics; return a summary.
    The model takes the data's Preprocessing, so that its checkpoints carry it."""
    from tqdm import tqdm

    model.preprocessing = data.preprocessing
    pre = data.preprocessing
    os.makedirs(out_dir, exist_ok=True)
    for path in clean_stale_temps(out_dir, OUTPUTS):
        print(f"removed {path}, left by an interrupted run", file=sys.stderr)
    opt = make_optimizer(model, opts)
    steps_per_epoch = len(data.x_train) // opts.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={opts.batch_size} is larger than the training set "
                         f"({len(data.x_train)} images); lower --batch-size")
    total = steps_per_epoch * opts.epochs
    warmup = int(round(opts.warmup_epochs * steps_per_epoch))
    step, best, history = 0, -1.0, []
    if resume:
        meta = load_checkpoint(resume, model, opt)
        step, best = int(meta["step"]), float(meta["extra"].get("best_acc", -1.0))
        history = (meta.get("extra") or {}).get("history")
        if history is None:                               # a checkpoint not written by fit
            history = read_metrics(out_dir, step // steps_per_epoch)
        history = list(history)
        if meta.get("rng_state") is not None:
            set_rng_state(model.rng, meta["rng_state"])
        write_metrics(out_dir, history)                   # what the checkpoint holds, no more
        print(f"resumed from {resume} at step {step} (epoch {step // steps_per_epoch})")
    config = run_config or {"model": model.config.to_dict(), "train": dataclasses.asdict(opts)}
    atomic_write(os.path.join(out_dir, "config.json"),
                 lambda f: f.write(json.dumps(config, indent=2).encode()))

    def save(name: str) -> None:
        save_checkpoint(os.path.join(out_dir, name), model, opt, step=step,
                        epoch=step // steps_per_epoch, rng_state=rng_state(model.rng),
                        extra={"best_acc": best, "history": history})

    t_start, images_seen, train_time, preds = time.perf_counter(), 0, 0.0, None
    stop = GracefulInterrupt()
    try:
        for epoch in range(step // steps_per_epoch, opts.epochs):
            skip = step - epoch * steps_per_epoch                 # batches done before a resume
            loss_sum = correct = seen = 0
            t_epoch = time.perf_counter()
            bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{opts.epochs}",
                       unit="batch", disable=quiet, dynamic_ncols=True, leave=True)
            for x, y in batches(data, opts, epoch, skip, model.config.dtype):
                lr = warmup_cosine(step, total, opts.lr, warmup, opts.min_lr)
                loss, hits = train_step(model, opt, x, y, lr, opts)
                step += 1
                loss_sum += loss * len(y)
                correct += hits
                seen += len(y)
                elapsed = time.perf_counter() - t_epoch
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                                lr=f"{lr:.2e}", img_s=f"{seen / max(elapsed, 1e-9):.0f}",
                                refresh=False)            # drawn by update, at most 10 times a second
                bar.update(1)
                if stop.requested and step % steps_per_epoch:    # Ctrl-C: stop on this step
                    bar.close()
                    stop.save_and_exit(save, step, out_dir)
            bar.close()
            epoch_time = time.perf_counter() - t_epoch
            train_time += epoch_time
            images_seen += seen
            preds = predict(model, data.x_test, opts.eval_batch_size, pre.mean, pre.std)
            test_acc = float((preds == data.y_test).mean())
            record = {"epoch": epoch + 1, "step": step, "lr": lr,
                      "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                      "test_acc": test_acc, "epoch_time_s": round(epoch_time, 2),
                      "images_per_s": round(seen / max(epoch_time, 1e-9), 1),
                      "wall_s": round(time.perf_counter() - t_start, 2)}
            history.append(record)
            tqdm.write(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} "
                       f"acc {record['train_acc']:.4f} | test acc {test_acc:.4f} | "
                       f"{record['images_per_s']:.0f} img/s")
            if test_acc > best:
                best = test_acc
                save("best.npz")
            save("last.npz")
            write_metrics(out_dir, history)               # after the checkpoint that holds it
            if stop.requested:
                stop.save_and_exit(save, step, out_dir)
    except KeyboardInterrupt:                             # a second Ctrl-C: stop mid-step
        print(f"\nstopped mid-step without saving; {out_dir}/last.npz (if any) holds the end of "
              f"the last finished epoch: resume from it with --resume", file=sys.stderr)
        raise SystemExit(130)
    finally:
        stop.restore()

    plot_curves(history, os.path.join(out_dir, "curves.png"))
    if preds is None:                                     # resumed after the last epoch
        preds = predict(model, data.x_test, opts.eval_batch_size, pre.mean, pre.std)
    cm = confusion_matrix(data.y_test, preds, model.config.num_classes)
    if not quiet:
        print(report(cm, pre.class_names))
    wall = time.perf_counter() - t_start
    return {"test_acc": float(cm.diagonal().sum() / max(cm.sum(), 1)), "best_test_acc": best,
            "epochs": opts.epochs, "steps": step, "wall_s": round(wall, 1),
            "train_images_per_s": round(images_seen / max(train_time, 1e-9), 1),
            "out": out_dir}


def write_metrics(out_dir: str, history: list) -> None:
    """out_dir/metrics.jsonl: one JSON line per finished epoch of history, written whole and
    atomically, so that it always agrees with a checkpoint's history."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    atomic_write(os.path.join(out_dir, "metrics.jsonl"), lambda f: f.write(text.encode()))


def read_metrics(out_dir: str, upto: int) -> list:
    """The records of out_dir/metrics.jsonl for epochs 1..upto, one per epoch (the last line of
    a repeated epoch wins); damaged lines are skipped."""
    records = {}
    try:
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                epoch = r.get("epoch") if isinstance(r, dict) else None
                if isinstance(epoch, int) and 0 < epoch <= upto:
                    records[epoch] = r
    except OSError:                                       # none yet, or unreadable: start afresh
        return []
    return [records[e] for e in sorted(records)]


def train_step(model: ViT, opt, x, y, lr: float, opts: TrainOptions) -> tuple:
    """One update: forward, loss, backward, clip the trainable gradients, optimizer step.
    Returns the loss and how many of the batch's predictions were right."""
    backbone = not set(model.params).difference(model.head_keys()) <= opt.frozen
    logits = model.forward(x, train=True, backbone_grads=backbone)          # (B, K)
    loss, cache = cross_entropy_forward(logits, y, opts.smoothing)
    if not np.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss}; lower --lr (now {opts.lr}) or keep "
                                 f"--clip on, and resume from the last good last.npz")
    model.backward(cross_entropy_backward(cache))
    if opts.clip:                         # the model's flat grads, or the trainable ones alone
        clip_grad_norm(model.grads if not opt.frozen else
                       {k: g for k, g in model.grads.items() if k not in opt.frozen}, opts.clip)
    opt.step(model.grads, lr=lr)
    return loss, int((logits.argmax(1) == y).sum())


def rng_state(rng):
    """The dropout generator's state as JSON-able data, or None where the backend has none to
    give (CuPy's generators: a resumed GPU run with dropout then draws fresh masks)."""
    try:
        state = rng.bit_generator.state
        json.dumps(state)                                 # it goes into the checkpoint's header
        return state
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None


def set_rng_state(rng, state) -> None:
    """Restore rng_state(); only NumPy generators have a settable state (CuPy's `state` is a
    method, which an assignment would silently replace), so others get a note instead."""
    try:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"a {type(rng).__module__} generator has no settable state")
        rng.bit_generator.state = state
    except (AttributeError, NotImplementedError, TypeError, ValueError) as e:
        print(f"note: could not restore the dropout generator ({e}); masks will differ from an "
              f"uninterrupted run", file=sys.stderr)


