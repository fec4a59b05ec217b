"""The training loop.

    fit(model, data, opts, out_dir)   trains with AdamW (or SGD), warmup + cosine, clipping and
                                      label smoothing; evaluates after every epoch; writes
                                      last.npz, best.npz, metrics.jsonl, config.json, curves.png

fit in steps: check_data (labels and batch size checked before anything is written),
resume_state (a checkpoint's weights, optimizer, generator and RunState), prepare_folder,
train_epoch (train_step after train_step, with the progress bar), epoch_record and finish.

Data-parallel (parallel/mpi.py): under mpiexec every process runs fit on its equal share of each
global batch (the same order, shifts and dropout masks as one process), the gradients and the
step's statistics are summed by one all-reduce, and only rank 0 prints and writes.

Every file is written atomically (files.atomic_write), so a run killed at any moment leaves files
that load. metrics.jsonl is rewritten whole from the history kept in the checkpoints, after them:
on --resume it is rewritten from the resumed checkpoint, so it never repeats or misses an epoch.
A checkpoint written mid-epoch (Ctrl-C) carries that epoch's running sums (EpochSums), so the
resumed epoch's line equals the line an uninterrupted run writes.
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
from ..errors import Diverged, UserError
from ..files import atomic_write, clean_stale_temps
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..layers import BatchRows, check_labels, cross_entropy_backward, cross_entropy_losses
from ..model import ViT
from ..optim import SGD, AdamW, clip_grad_norm, warmup_cosine
from ..parallel import Single
from ..parallel import world as default_world
from ..parallel.mpi import failed_in_step, failed_together, on_root
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
    augment: bool | str = True        # True/"shift": random shifts of up to 2 pixels (MNIST);
                                      # "crop-flip": random resized crop + flip (photos); False
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
    raise UserError(f"unknown optimizer {opts.optimizer!r}; use 'adamw' or 'sgd'")


def batches(data: Dataset, opts: TrainOptions, epoch: int, start: int, dtype: str, world=None):
    """This epoch's shuffled training batches from index `start` on: (x (b, C, H, W), y (b,)),
    this process's share b = B / world.size of each global batch of B."""
    pre = data.preprocessing
    shard = (0, 1) if world is None else (world.rank, world.size)
    return iterate_batches(data.x_train, data.y_train, opts.batch_size, shuffle=True,
                           seed=opts.seed, epoch=epoch, drop_last=True, augment=opts.augment,
                           dtype=dtype, mean=pre.mean, std=pre.std, shard=shard).batches(start)


class EpochSums:
    """The running sums of the epoch in progress, which its metrics line is made of. A checkpoint
    written mid-epoch (Ctrl-C) carries them, so that the resumed epoch's line equals the line of
    an uninterrupted run (loss and accuracy exactly; time as the sum of both parts)."""

    def __init__(self, loss: float = 0.0, hits: int = 0, seen: int = 0, time_s: float = 0.0):
        self.loss = float(loss)       # sum over the epoch's images of their loss
        self.hits = int(hits)         # right predictions
        self.seen = int(seen)         # images trained on
        self.time_s = float(time_s)   # training time before this process took the epoch over

    def add(self, r: "StepResult", batch: int) -> None:
        self.loss += r.loss * batch
        self.hits += r.hits
        self.seen += batch

    def to_dict(self) -> dict:
        return {"loss": self.loss, "hits": self.hits, "seen": self.seen, "time_s": self.time_s}

    @classmethod
    def from_dict(cls, d) -> "EpochSums":
        """From a checkpoint's header: a missing or malformed entry (an older checkpoint) starts
        the sums afresh."""
        keys = ("loss", "hits", "seen", "time_s")
        if not isinstance(d, dict) or not all(_number(d.get(k)) for k in keys):
            return cls()
        return cls(**{k: d[k] for k in keys})


@dataclass
class RunState:
    """Where a run stands: what a checkpoint carries besides the weights and optimizer."""
    step: int = 0
    best: float = -1.0                                    # best test accuracy so far
    history: list = field(default_factory=list)           # one metrics record per finished epoch
    sums: EpochSums = field(default_factory=EpochSums)    # the unfinished epoch's
    wall_s: float = 0.0                                   # wall time of the earlier sessions

    def extra(self, epoch_sums: Optional[EpochSums], wall_s: float) -> dict:
        """The checkpoint's `extra` header entry."""
        return {"best_acc": self.best, "history": self.history, "wall_s": wall_s,
                "epoch_sums": None if epoch_sums is None else epoch_sums.to_dict()}


def check_data(model: ViT, data: Dataset, opts: TrainOptions, world) -> int:
    """Optimizer steps per epoch; ValueError (before anything is written) for labels outside the
    model's classes (checked here once, so that no training step has to read them) or a batch
    size the processes or the training set cannot take."""
    for split, y in (("training", data.y_train), ("test", data.y_test)):
        try:
            check_labels(np.asarray(y), model.config.num_classes)
        except ValueError as e:
            raise UserError(f"the {split} set's {e}") from None
    if opts.batch_size % world.size:
        raise UserError(f"batch_size={opts.batch_size} is not divisible by the {world.size} "
                        f"processes; choose a batch size that is a multiple of {world.size}")
    steps = len(data.x_train) // opts.batch_size
    if steps == 0:
        raise UserError(f"batch_size={opts.batch_size} is larger than the training set "
                        f"({len(data.x_train)} images); lower --batch-size")
    return steps


def resume_state(path: str, model: ViT, opt, out_dir: str, steps_per_epoch: int) -> RunState:
    """Load the checkpoint at path into model and opt; the run's state from its header (a
    checkpoint not written by fit: the history from out_dir/metrics.jsonl)."""
    meta = load_checkpoint(path, model, opt)
    extra = meta.get("extra") or {}
    step = int(meta["step"])
    history = extra.get("history")
    if not isinstance(history, list) or not all(_is_record(r) for r in history):
        history = read_metrics(out_dir, step // steps_per_epoch)   # not written by fit
    sums = EpochSums.from_dict(extra.get("epoch_sums")) if step % steps_per_epoch else EpochSums()
    if meta.get("rng_state") is not None:
        set_rng_state(model.rng, meta["rng_state"])
    best, wall = extra.get("best_acc"), extra.get("wall_s")
    return RunState(step, float(best) if _number(best) else -1.0, list(history), sums,
                    float(wall) if _number(wall) else 0.0)


def prepare_folder(out_dir: str) -> None:
    """Make out_dir, and remove the temporary files a killed run left there."""
    os.makedirs(out_dir, exist_ok=True)
    for path in clean_stale_temps(out_dir, OUTPUTS):
        print(f"removed {path}, left by an interrupted run", file=sys.stderr)


def where(step: int, steps_per_epoch: int, epochs: int) -> str:
    """A step as the progress bar counts it: 'epoch 2/12, batch 7/20', or 'after epoch 1/12'."""
    epoch, batch = divmod(step, steps_per_epoch)
    if batch == 0:
        return f"after epoch {epoch}/{epochs}"
    return f"epoch {epoch + 1}/{epochs}, batch {batch}/{steps_per_epoch}"


def fit(model: ViT, data: Dataset, opts: TrainOptions, out_dir: str, resume: Optional[str] = None,
        run_config: Optional[dict] = None, quiet: bool = False, world=None) -> dict:
    """Train, evaluate after each epoch, keep last/best checkpoints and metrics; return a summary.
    The model takes the data's Preprocessing, so that its checkpoints carry it. world: the
    processes of a data-parallel job (default: parallel.world(), one process outside mpiexec).
    Everything that can be checked is checked before out_dir is touched."""
    world = default_world() if world is None else world
    root = world.is_root
    steps_per_epoch = check_data(model, data, opts, world)
    model.preprocessing = data.preprocessing
    if opts.frozen:
        model.freeze(opts.frozen)
    opt = make_optimizer(model, opts)
    state = resume_state(resume, model, opt, out_dir, steps_per_epoch) if resume else RunState()

    def start() -> None:                                  # the root's writes before training
        prepare_folder(out_dir)
        config = run_config or {"model": model.config.to_dict(), "train": dataclasses.asdict(opts)}
        atomic_write(os.path.join(out_dir, "config.json"),
                     lambda f: f.write(json.dumps(config, indent=2).encode()))
        if resume:
            write_metrics(out_dir, state.history)         # what the checkpoint holds, no more
            print(f"resumed from {resume} at step {state.step} "
                  f"({where(state.step, steps_per_epoch, opts.epochs)})")
    on_root(world, start)

    t_start = time.perf_counter() - state.wall_s          # the wall clock of the whole run

    def save(name: str, sums: Optional[EpochSums] = None) -> None:
        # rank 0 writes (the others hold the same); a failed write ends every process cleanly
        on_root(world, lambda: save_checkpoint(
            os.path.join(out_dir, name), model, opt, step=state.step,
            epoch=state.step // steps_per_epoch, rng_state=rng_state(model.rng),
            extra=state.extra(sums, time.perf_counter() - t_start)))

    images_seen, train_time, cm = 0, 0.0, None
    stop = GracefulInterrupt(announce=root)
    try:
        for epoch in range(state.step // steps_per_epoch, opts.epochs):
            sums, lr, stopping = train_epoch(model, opt, data, opts, state, epoch,
                                             steps_per_epoch, world, stop, quiet, save, out_dir)
            train_time += sums.time_s
            images_seen += sums.seen
            cm = evaluate(model, data.x_test, data.y_test, opts.eval_batch_size,
                          data.preprocessing.mean, data.preprocessing.std, world)
            record = epoch_record(epoch, state.step, lr, sums, cm, time.perf_counter() - t_start)
            state.history.append(record)
            if root:
                print_epoch(record)
            if record["test_acc"] > state.best:
                state.best = record["test_acc"]
                save("best.npz")
            save("last.npz")
            on_root(world, lambda: write_metrics(out_dir, state.history))   # after the checkpoint
            if stopping:
                stop.save_and_exit(save, out_dir, where(state.step, steps_per_epoch, opts.epochs))
            if opts.stop_after_epochs is not None and epoch + 1 >= opts.stop_after_epochs \
                    and epoch + 1 < opts.epochs:
                if root:
                    print(f"stopped after epoch {epoch + 1} of {opts.epochs} as asked; continue "
                          f"with --resume {os.path.join(out_dir, 'last.npz')}", file=sys.stderr)
                break
        # inside the handler's reach: a Ctrl-C while the root plots (the others wait for it in
        # on_root's collective) asks to stop and the run ends as it would have
        return finish(model, data, opts, state, out_dir, cm, world, quiet,
                      images_seen / max(train_time, 1e-9), time.perf_counter() - t_start)
    except KeyboardInterrupt:                             # a second Ctrl-C: stop mid-step
        if root:
            print(f"\nstopped mid-step without saving; {out_dir}/last.npz (if any) holds the end "
                  f"of the last finished epoch: resume from it with --resume", file=sys.stderr)
        raise SystemExit(130)
    finally:
        stop.restore()


def train_epoch(model: ViT, opt, data: Dataset, opts: TrainOptions, state: RunState, epoch: int,
                steps_per_epoch: int, world, stop: GracefulInterrupt, quiet: bool, save,
                out_dir: str) -> tuple:
    """The rest of one epoch's steps (all of them, or those after a resume), with its progress
    bar. Returns (sums, the last learning rate, whether Ctrl-C asked to stop at its end); a
    Ctrl-C mid-epoch saves last.npz with the epoch's sums and exits."""
    from tqdm import tqdm

    skip = state.step - epoch * steps_per_epoch           # batches done before a resume
    sums, state.sums = state.sums, EpochSums()            # a resumed epoch's sums, once
    total = steps_per_epoch * opts.epochs
    warmup = int(round(opts.warmup_epochs * steps_per_epoch))
    t_epoch, time_before = time.perf_counter(), sums.time_s
    bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{opts.epochs}",
               unit="batch", disable=quiet or not world.is_root, dynamic_ncols=True, leave=True)
    lr, stopping = opts.lr, False
    for x, y in batches(data, opts, epoch, skip, model.config.dtype, world):
        lr = warmup_cosine(state.step, total, opts.lr, warmup, opts.min_lr)
        r = train_step(model, opt, x, y, lr, opts, world, stop.requested)
        state.step += 1
        sums.add(r, len(y) * world.size)                  # the global batch
        sums.time_s = time_before + time.perf_counter() - t_epoch
        bar.set_postfix(loss=f"{sums.loss / sums.seen:.4f}", acc=f"{sums.hits / sums.seen:.4f}",
                        lr=f"{lr:.2e}", img_s=f"{sums.seen / max(sums.time_s, 1e-9):.0f}",
                        refresh=False)                    # drawn by update, at most 10 times a second
        bar.update(1)
        # Ctrl-C: one process's own flag, or, with several, the flags summed in the step's
        # all-reduce, so that every process stops after the same step
        stopping = r.stop if world.size > 1 else stop.requested
        if stopping and state.step % steps_per_epoch:     # Ctrl-C: stop on this step
            bar.close()
            stop.save_and_exit(lambda name: save(name, sums), out_dir,
                               where(state.step, steps_per_epoch, opts.epochs))
    bar.close()
    return sums, lr, stopping


def epoch_record(epoch: int, step: int, lr: float, sums: EpochSums, cm, wall_s: float) -> dict:
    """The metrics line of a finished epoch."""
    seen = max(sums.seen, 1)
    return {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": sums.loss / seen,
            "train_acc": sums.hits / seen, "test_acc": float(cm.diagonal().sum() / max(cm.sum(), 1)),
            "epoch_time_s": round(sums.time_s, 2),
            "images_per_s": round(sums.seen / max(sums.time_s, 1e-9), 1),
            "wall_s": round(wall_s, 2)}


def print_epoch(record: dict) -> None:
    from tqdm import tqdm
    tqdm.write(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
               f"acc {record['train_acc']:.4f} | test acc {record['test_acc']:.4f} | "
               f"{record['images_per_s']:.0f} img/s")


def finish(model: ViT, data: Dataset, opts: TrainOptions, state: RunState, out_dir: str, cm, world,
           quiet: bool, images_per_s: float, wall_s: float) -> dict:
    """The curves plot, the final report and the run's summary."""
    pre = data.preprocessing
    on_root(world, lambda: plot_curves(state.history, os.path.join(out_dir, "curves.png")))
    if cm is None:                                        # resumed after the last epoch
        cm = evaluate(model, data.x_test, data.y_test, opts.eval_batch_size, pre.mean, pre.std,
                      world)
    if not quiet and world.is_root:
        print(report(cm, pre.class_names))
    return {"test_acc": float(cm.diagonal().sum() / max(cm.sum(), 1)), "best_test_acc": state.best,
            "epochs": opts.epochs, "steps": state.step, "wall_s": round(wall_s, 1),
            "train_images_per_s": round(images_per_s, 1), "world_size": world.size, "out": out_dir}


def write_metrics(out_dir: str, history: list) -> None:
    """out_dir/metrics.jsonl: one JSON line per finished epoch of history, written whole and
    atomically, so that it always agrees with a checkpoint's history."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    atomic_write(os.path.join(out_dir, "metrics.jsonl"), lambda f: f.write(text.encode()))


METRIC_NUMBERS = ("train_loss", "train_acc", "test_acc")   # what plot_curves reads


def read_metrics(out_dir: str, upto: int) -> list:
    """The records of out_dir/metrics.jsonl for epochs 1..upto, one per epoch (the last line of
    a repeated epoch wins). Damaged lines are skipped: not UTF-8, not JSON (or nested past
    what the parser can take), not an object with an integer epoch and the numbers the curves
    plot."""
    records = {}
    try:
        with open(os.path.join(out_dir, "metrics.jsonl"), "rb") as f:
            for raw in f:
                try:
                    r = json.loads(raw.decode("utf-8"))
                except (ValueError, RecursionError):      # UnicodeDecodeError is a ValueError
                    continue
                if _is_record(r) and 0 < r["epoch"] <= upto:
                    records[r["epoch"]] = r
    except OSError:                                       # none yet, or unreadable: start afresh
        return []
    return [records[e] for e in sorted(records)]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_record(r) -> bool:
    """A metrics record: a JSON object with an integer epoch and numeric METRIC_NUMBERS."""
    return (isinstance(r, dict) and isinstance(r.get("epoch"), int)
            and not isinstance(r["epoch"], bool) and all(_number(r.get(k)) for k in METRIC_NUMBERS))


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
    flags; every process then clips by the global norm and takes the same step.

    On the GPU the step waits for the device once: the loss sum and the hits are fetched
    together (stats), which also is the NaN check. The labels were checked once for the whole
    dataset (check_data) and the images are finite by construction (normalized uint8), so
    neither is read here; the mask seed comes from a host generator; clipping stays on the
    device."""
    world = Single() if world is None else world
    b = len(y)
    B = b * world.size
    failure = None
    try:
        masks = BatchRows(int(model.rng.integers(2 ** 63)), world.rank * b,
                          (world.rank + 1) * b, B)
        logits = model.forward(x, train=True, masks=masks, check_finite=False)  # (b, K)
        losses, cache = cross_entropy_losses(logits, y, opts.smoothing)     # (b,), no sync
        dlogits = cross_entropy_backward(cache)                             # (b, K), mean over b
        xp = backend.xp_of(logits)
        stats = xp.stack([losses.sum(dtype=xp.float64),                    # (2,) on the device
                          (logits.argmax(1) == y).sum(dtype=xp.float64)])
        if world.size > 1:
            dlogits *= b / B                              # this process's share of the mean
        model.backward(dlogits)
        host = backend.to_numpy(stats)                    # the step's one device-to-host copy
    except Exception as e:                                # the others must learn of it below,
        if world.size == 1:                               # not wait for it in the all-reduce
            raise
        failure, host = e, np.zeros(2)
        model.grads.flat[...] = 0
    if world.size > 1:
        world.allreduce_(model.grads.flat)
        host = world.allreduce_(np.array([host[0], host[1], float(stop),     # (4,) host float64
                                          float(failure is not None)]))
        failed_in_step(world, failure, float(host[3]))    # every process ends here, or none
        stop = float(host[2]) > 0
    loss, hits = float(host[0]) / B, int(round(float(host[1])))
    if not np.isfinite(loss):                             # every process sees the same loss
        raise failed_together(world, Diverged(
            f"the loss became {loss}; lower --lr (now {opts.lr}) or keep --clip on, and resume "
            f"from the last good last.npz"))
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


