"""The training loop.

    fit(model, data, opts, out_dir)   trains with AdamW (or SGD), warmup + cosine, clipping and
                                      label smoothing; evaluates after every epoch; writes
                                      last.npz, best.npz, metrics.jsonl, config.json, curves.png

Data-parallel (parallel/mpi.py): under mpiexec every process runs fit on its equal share of each
global batch (the same order, shifts and dropout masks as one process), the gradients and the
step's statistics are summed by one all-reduce, and only rank 0 prints and writes.

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
from typing import NamedTuple, Optional

import numpy as np

from .. import backend
from ..data.batches import Dataset, iterate_batches
from ..files import atomic_write, clean_stale_temps
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..layers import BatchRows, cross_entropy_backward, cross_entropy_forward
from ..model import ViT
from ..optim import SGD, AdamW, clip_grad_norm, warmup_cosine
from ..parallel import Single, world as default_world
from .evaluate import evaluate, report
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
    frozen: list = field(default_factory=list)   # parameter names to keep fixed (fit applies
                                                 # them with model.freeze)
    stop_after_epochs: Optional[int] = None      # save and stop after this many epochs (the
                                                 # schedule stays that of `epochs`); resume later


def make_optimizer(model: ViT, opts: TrainOptions):
    """The optimizer of opts over the model's trainable params (model.frozen left alone); weight
    decay on model.decay_keys() only."""
    frozen, decay = set(model.frozen), model.decay_keys()
    if opts.optimizer == "adamw":
        return AdamW(model.params, lr=opts.lr, weight_decay=opts.weight_decay, frozen=frozen,
                     decay=decay)
    if opts.optimizer == "sgd":
        return SGD(model.params, lr=opts.lr, momentum=opts.momentum, nesterov=True,
                   weight_decay=opts.weight_decay, frozen=frozen, decay=decay)
    raise ValueError(f"unknown optimizer {opts.optimizer!r}; use 'adamw' or 'sgd'")


def batches(data: Dataset, opts: TrainOptions, epoch: int, start: int, dtype: str, world=None):
    """This epoch's shuffled training batches from index `start` on: (x (b, C, H, W), y (b,)),
    this process's share b = B / world.size of each global batch of B."""
    pre = data.preprocessing
    shard = (0, 1) if world is None else (world.rank, world.size)
    return iterate_batches(data.x_train, data.y_train, opts.batch_size, shuffle=True,
                           seed=opts.seed, epoch=epoch, drop_last=True, augment=opts.augment,
                           dtype=dtype, mean=pre.mean, std=pre.std, shard=shard).batches(start)


def fit(model: ViT, data: Dataset, opts: TrainOptions, out_dir: str, resume: Optional[str] = None,
        run_config: Optional[dict] = None, quiet: bool = False, world=None) -> dict:
    """Train, evaluate after each epoch, keep last/best checkpoints and metrics; return a summary.
    The model takes the data's Preprocessing, so that its checkpoints carry it. world: the
    processes of a data-parallel job (default: parallel.world(), one process outside mpiexec)."""
    from tqdm import tqdm

    world = default_world() if world is None else world
    root = world.is_root
    if opts.batch_size % world.size:
        raise ValueError(f"batch_size={opts.batch_size} is not divisible by the {world.size} "
                         f"processes; choose a batch size that is a multiple of {world.size}")
    model.preprocessing = data.preprocessing
    if opts.frozen:
        model.freeze(opts.frozen)
    pre = data.preprocessing
    if root:
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
        if root:
            write_metrics(out_dir, history)               # what the checkpoint holds, no more
            print(f"resumed from {resume} at step {step} (epoch {step // steps_per_epoch})")
    if root:
        config = run_config or {"model": model.config.to_dict(), "train": dataclasses.asdict(opts)}
        atomic_write(os.path.join(out_dir, "config.json"),
                     lambda f: f.write(json.dumps(config, indent=2).encode()))

    def save(name: str) -> None:                          # rank 0 writes; the others hold the same
        if root:
            save_checkpoint(os.path.join(out_dir, name), model, opt, step=step,
                            epoch=step // steps_per_epoch, rng_state=rng_state(model.rng),
                            extra={"best_acc": best, "history": history})

    t_start, images_seen, train_time, cm = time.perf_counter(), 0, 0.0, None
    stop = GracefulInterrupt(announce=root)
    stopping = False
    try:
        for epoch in range(step // steps_per_epoch, opts.epochs):
            skip = step - epoch * steps_per_epoch                 # batches done before a resume
            loss_sum = correct = seen = 0
            t_epoch = time.perf_counter()
            bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{opts.epochs}",
                       unit="batch", disable=quiet or not root, dynamic_ncols=True, leave=True)
            for x, y in batches(data, opts, epoch, skip, model.config.dtype, world):
                lr = warmup_cosine(step, total, opts.lr, warmup, opts.min_lr)
                r = train_step(model, opt, x, y, lr, opts, world, stop.requested)
                step += 1
                B = len(y) * world.size                   # the global batch
                loss_sum += r.loss * B
                correct += r.hits
                seen += B
                elapsed = time.perf_counter() - t_epoch
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                                lr=f"{lr:.2e}", img_s=f"{seen / max(elapsed, 1e-9):.0f}",
                                refresh=False)            # drawn by update, at most 10 times a second
                bar.update(1)
                # Ctrl-C: one process's own flag, or, with several, the flags summed in the step's
                # all-reduce, so that every process stops after the same step
                stopping = r.stop if world.size > 1 else stop.requested
                if stopping and step % steps_per_epoch:   # Ctrl-C: stop on this step
                    bar.close()
                    stop.save_and_exit(save, step, out_dir)
            bar.close()
            epoch_time = time.perf_counter() - t_epoch
            train_time += epoch_time
            images_seen += seen
            cm = evaluate(model, data.x_test, data.y_test, opts.eval_batch_size, pre.mean, pre.std,
                          world)
            test_acc = float(cm.diagonal().sum() / max(cm.sum(), 1))
            record = {"epoch": epoch + 1, "step": step, "lr": lr,
                      "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                      "test_acc": test_acc, "epoch_time_s": round(epoch_time, 2),
                      "images_per_s": round(seen / max(epoch_time, 1e-9), 1),
                      "wall_s": round(time.perf_counter() - t_start, 2)}
            history.append(record)
            if root:
                tqdm.write(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} "
                           f"acc {record['train_acc']:.4f} | test acc {test_acc:.4f} | "
                           f"{record['images_per_s']:.0f} img/s")
            if test_acc > best:
                best = test_acc
                save("best.npz")
            save("last.npz")
            if root:
                write_metrics(out_dir, history)           # after the checkpoint that holds it
            if stopping:
                stop.save_and_exit(save, step, out_dir)
            if opts.stop_after_epochs is not None and epoch + 1 >= opts.stop_after_epochs \
                    and epoch + 1 < opts.epochs:
                if root:
                    print(f"stopped after epoch {epoch + 1} of {opts.epochs} as asked; continue "
                          f"with --resume {os.path.join(out_dir, 'last.npz')}", file=sys.stderr)
                break
    except KeyboardInterrupt:                             # a second Ctrl-C: stop mid-step
        if root:
            print(f"\nstopped mid-step without saving; {out_dir}/last.npz (if any) holds the end "
                  f"of the last finished epoch: resume from it with --resume", file=sys.stderr)
        raise SystemExit(130)
    finally:
        stop.restore()

    if root:
        plot_curves(history, os.path.join(out_dir, "curves.png"))
    if cm is None:                                        # resumed after the last epoch
        cm = evaluate(model, data.x_test, data.y_test, opts.eval_batch_size, pre.mean, pre.std,
                      world)
    if not quiet and root:
        print(report(cm, pre.class_names))
    wall = time.perf_counter() - t_start
    return {"test_acc": float(cm.diagonal().sum() / max(cm.sum(), 1)), "best_test_acc": best,
            "epochs": opts.epochs, "steps": step, "wall_s": round(wall, 1),
            "train_images_per_s": round(images_seen / max(train_time, 1e-9), 1),
            "world_size": world.size, "out": out_dir}


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


class StepResult(NamedTuple):
    loss: float         # mean loss over the global batch
    hits: int           # right predictions in the global batch
    stop: bool          # some process asked to stop (Ctrl-C)


def train_step(model: ViT, opt, x, y, lr: float, opts: TrainOptions, world=None,
               stop: bool = False) -> StepResult:
    """One update: forward, loss, backward, clip the trainable gradients, optimizer step.
    With a world of R processes, x (b, ...) is this process's rows of a global batch of B = R b
    (its dropout masks those rows of the global batch's): its loss gradient is scaled by b / B,
    one in-place all-reduce sums the gradients and a second the step's loss, hits and stop
    flags; every process then clips by the global norm and takes the same step."""
    world = Single() if world is None else world
    b = len(y)
    B = b * world.size
    masks = BatchRows(int(model.rng.integers(2 ** 63)), world.rank * b, (world.rank + 1) * b, B)
    logits = model.forward(x, train=True, masks=masks)                      # (b, K)
    loss, cache = cross_entropy_forward(logits, y, opts.smoothing)
    dlogits = cross_entropy_backward(cache)                                 # (b, K), mean over b
    hits = int((logits.argmax(1) == y).sum())
    if world.size > 1:
        dlogits *= b / B                                  # this process's share of the mean over B
    model.backward(dlogits)
    if world.size > 1:
        world.allreduce_(model.grads.flat)
        stats = world.allreduce_(np.array([loss * b, hits, float(stop)]))   # (3,) host float64
        loss, hits, stop = float(stats[0]) / B, int(round(float(stats[1]))), float(stats[2]) > 0
    if not np.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss}; lower --lr (now {opts.lr}) or keep "
                                 f"--clip on, and resume from the last good last.npz")
    if opts.clip:                         # the model's flat grads, or the trainable ones alone
        clip_grad_norm(model.grads if not model.frozen else
                       {k: model.grads[k] for k in model.trainable_keys()}, opts.clip)
    opt.step(model.grads, lr=lr)
    return StepResult(loss, hits, bool(stop))


def rng_state(rng):
    """The mask-seed generator's state as JSON-able data (model.rng, a host NumPy generator on
    every backend, so a resumed run draws the masks an uninterrupted one would), or None for a
    generator that has no such state."""
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


