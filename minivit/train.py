"""The trainer and its command line: `python -m minivit.train` (examples/train_mnist.py calls it).

    fit(model, data, opts, out_dir)   trains with AdamW (or SGD), warmup + cosine, clipping and
                                      label smoothing; evaluates after every epoch; writes
                                      last.npz, best.npz, metrics.jsonl, config.json, curves.png
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import backend
from .config import ViTConfig
from .evaluate import confusion_matrix, predict, report
from .layers import cross_entropy_backward, cross_entropy_forward
from .model import ViT


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


@dataclass
class Dataset:
    """uint8 images (M, H, W) or (M, C, H, W) with integer labels, and their normalization."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: float = 0.0
    std: float = 1.0
    class_names: Optional[list] = None


# Model sizes the CLI offers; the MNIST recipes are in PRESETS.
MODELS = {
    "tiny": dict(patch_size=7, dim=32, depth=2, heads=2, mlp_ratio=2.0),
    "default": dict(patch_size=7, dim=64, depth=6, heads=4, mlp_ratio=2.0),
    "wide": dict(patch_size=4, dim=128, depth=6, heads=4, mlp_ratio=2.0),
}
PRESETS = {
    "default": dict(model="default", epochs=12),
    "best": dict(model="default", epochs=40),
}


def make_optimizer(model: ViT, opts: TrainOptions):
    from .optim import SGD, AdamW
    frozen = set(opts.frozen)
    if opts.optimizer == "adamw":
        return AdamW(model.params, lr=opts.lr, weight_decay=opts.weight_decay, frozen=frozen)
    if opts.optimizer == "sgd":
        return SGD(model.params, lr=opts.lr, momentum=opts.momentum, nesterov=True,
                   weight_decay=opts.weight_decay, frozen=frozen)
    raise ValueError(f"unknown optimizer {opts.optimizer!r}; use 'adamw' or 'sgd'")


def batches(data: Dataset, opts: TrainOptions, epoch: int, start: int, dtype: str):
    """This epoch's shuffled training batches from index `start` on: (x (B, C, H, W), y (B,))."""
    from .data import iterate_batches
    return iterate_batches(data.x_train, data.y_train, opts.batch_size, shuffle=True,
                           seed=opts.seed, epoch=epoch, drop_last=True, augment=opts.augment,
                           dtype=dtype, mean=data.mean, std=data.std).batches(start)


def fit(model: ViT, data: Dataset, opts: TrainOptions, out_dir: str, resume: Optional[str] = None,
        run_config: Optional[dict] = None, quiet: bool = False) -> dict:
    """Train, evaluate after each epoch, keep last/best checkpoints and metrics; return a summary."""
    from tqdm import tqdm

    from .checkpoint import load_checkpoint, save_checkpoint
    from .optim import warmup_cosine

    os.makedirs(out_dir, exist_ok=True)
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
        history = list(meta["extra"].get("history", []))
        if meta.get("rng_state") is not None:
            set_rng_state(model.rng, meta["rng_state"])
        print(f"resumed from {resume} at step {step} (epoch {step // steps_per_epoch})")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(run_config or {"model": model.config.to_dict(),
                                 "train": dataclasses.asdict(opts)}, f, indent=2)

    def save(name: str) -> None:
        save_checkpoint(os.path.join(out_dir, name), model, opt, step=step,
                        epoch=step // steps_per_epoch, rng_state=rng_state(model.rng),
                        extra={"best_acc": best, "history": history,
                               "class_names": data.class_names, "mean": data.mean, "std": data.std})

    t_start, images_seen, train_time, preds = time.perf_counter(), 0, 0.0, None
    stop = _GracefulInterrupt()
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
            preds = predict(model, data.x_test, opts.eval_batch_size, data.mean, data.std)
            test_acc = float((preds == data.y_test).mean())
            record = {"epoch": epoch + 1, "step": step, "lr": lr,
                      "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                      "test_acc": test_acc, "epoch_time_s": round(epoch_time, 2),
                      "images_per_s": round(seen / max(epoch_time, 1e-9), 1),
                      "wall_s": round(time.perf_counter() - t_start, 2)}
            history.append(record)
            with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            tqdm.write(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} "
                       f"acc {record['train_acc']:.4f} | test acc {test_acc:.4f} | "
                       f"{record['images_per_s']:.0f} img/s")
            if test_acc > best:
                best = test_acc
                save("best.npz")
            save("last.npz")
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
        preds = predict(model, data.x_test, opts.eval_batch_size, data.mean, data.std)
    cm = confusion_matrix(data.y_test, preds, model.config.num_classes)
    if not quiet:
        print(report(cm, data.class_names))
    wall = time.perf_counter() - t_start
    return {"test_acc": float(cm.diagonal().sum() / max(cm.sum(), 1)), "best_test_acc": best,
            "epochs": opts.epochs, "steps": step, "wall_s": round(wall, 1),
            "train_images_per_s": round(images_seen / max(train_time, 1e-9), 1),
            "out": out_dir}


def train_step(model: ViT, opt, x, y, lr: float, opts: TrainOptions) -> tuple:
    """One update: forward, loss, backward, clip the trainable gradients, optimizer step.
    Returns the loss and how many of the batch's predictions were right."""
    from .optim import clip_grad_norm
    backbone = not set(model.params).difference(model.head_keys()) <= opt.frozen
    logits = model.forward(x, train=True, backbone_grads=backbone)          # (B, K)
    loss, cache = cross_entropy_forward(logits, y, opts.smoothing)
    if not np.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss}; lower --lr (now {opts.lr}) or keep "
                                 f"--clip on, and resume from the last good last.npz")
    model.backward(cross_entropy_backward(cache))
    if opts.clip:
        clip_grad_norm({k: g for k, g in model.grads.items() if k not in opt.frozen}, opts.clip)
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


class _GracefulInterrupt:
    """The first Ctrl-C asks the loop to stop after the current step (and save); a second one
    raises KeyboardInterrupt at once. Only installed in the main thread."""

    def __init__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: saving a checkpoint after this step (press again to quit at once)",
              file=sys.stderr)

    @staticmethod
    def save_and_exit(save, step: int, out_dir: str) -> None:
        save("last.npz")
        last = os.path.join(out_dir, "last.npz")
        print(f"\ninterrupted at step {step}: saved {last}; continue with the same command "
              f"plus --resume {last}", file=sys.stderr)
        raise SystemExit(130)

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def plot_curves(history: list, path: str) -> bool:
    """Loss and accuracy per epoch as a PNG; says so and returns False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the training-curve plot "
              "(pip install -e .[plot] to get it)")
        return False
    if not history:
        return False
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    a1.set_xlabel("epoch"), a1.set_ylabel("loss"), a1.legend(), a1.grid(alpha=0.3)
    a2.plot(ep, [h["train_acc"] for h in history], "o-", label="train accuracy")
    a2.plot(ep, [h["test_acc"] for h in history], "s-", label="test accuracy")
    a2.set_xlabel("epoch"), a2.set_ylabel("accuracy"), a2.legend(), a2.grid(alpha=0.3)
    fig.suptitle(f"best test accuracy {max(h['test_acc'] for h in history):.4f}")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def build_parser() -> argparse.ArgumentParser:
    d = TrainOptions()
    ap = argparse.ArgumentParser(prog="python -m minivit.train",
                                 description="Train a ViT on MNIST with minivit.")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default",
                    help="a tested recipe (default: ~98.5%% in minutes; best: ~99%%)")
    ap.add_argument("--model", choices=sorted(MODELS), help="model size (overrides the preset)")
    ap.add_argument("--epochs", type=int, help="epochs (overrides the preset)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--optimizer", choices=("adamw", "sgd"), default=d.optimizer)
    ap.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    ap.add_argument("--min-lr", type=float, default=d.min_lr)
    ap.add_argument("--weight-decay", type=float, default=d.weight_decay)
    ap.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    ap.add_argument("--smoothing", type=float, default=d.smoothing, help="label smoothing")
    ap.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clip (0: off)")
    ap.add_argument("--no-augment", dest="augment", action="store_false",
                    help="turn off the random shifts")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--drop-path", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--tf32", action="store_true", help="GPU: TF32 tensor-core matmuls (faster, "
                    "about 1e-3 relative error)")
    ap.add_argument("--workers", type=int, default=None,
                    help="CPU worker threads the batch is split over (default: one per core)")
    ap.add_argument("--data", default=None, help="folder holding (or to receive) the MNIST files; "
                    "default $MINIVIT_DATA or ~/.cache/minivit/mnist")
    ap.add_argument("--out", default="runs/mnist", help="output folder")
    ap.add_argument("--resume", default=None, metavar="CHECKPOINT",
                    help="continue a run from its last.npz")
    ap.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    ap.add_argument("--limit-test", type=int, default=None, help="use only the first N test images")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def use_device(args) -> None:
    """A CLI's --device, --tf32 and --workers: the backend, TF32 (only when asked; otherwise
    CuPy's default) and the number of CPU worker threads."""
    backend.use(args.device, tf32=True if args.tf32 else None)
    if args.workers is not None:
        backend.set_workers(args.workers)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from .data import MNIST_MEAN, MNIST_STD, load_mnist

    use_device(args)
    preset = PRESETS[args.preset]
    cfg = ViTConfig(**MODELS[args.model or preset["model"]], image_size=28, in_channels=1,
                    num_classes=10, dropout=args.dropout, drop_path=args.drop_path)
    opts = TrainOptions(epochs=args.epochs or preset["epochs"], batch_size=args.batch_size,
                        optimizer=args.optimizer, lr=args.lr, min_lr=args.min_lr,
                        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                        smoothing=args.smoothing, clip=args.clip, augment=args.augment,
                        seed=args.seed)
    x_train, y_train, x_test, y_test = load_mnist(args.data)
    data = Dataset(x_train[:args.limit_train], y_train[:args.limit_train],
                   x_test[:args.limit_test], y_test[:args.limit_test], MNIST_MEAN, MNIST_STD,
                   [str(k) for k in range(10)])
    model = ViT(cfg, seed=args.seed)
    print(f"minivit: ViT patch {cfg.patch_size}, dim {cfg.dim}, depth {cfg.depth}, heads "
          f"{cfg.heads}, {model.num_params():,} parameters, on {backend.name()} "
          f"({backend.workers() if backend.name() == 'numpy' else 1} worker(s)); "
          f"{len(data.x_train)} training / {len(data.x_test)} test images")
    run_config = {"model": cfg.to_dict(), "train": dataclasses.asdict(opts),
                  "argv": sys.argv[1:] if argv is None else list(argv)}
    summary = fit(model, data, opts, args.out, resume=args.resume, run_config=run_config,
                  quiet=args.quiet)
    summary["device"] = args.device
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from minivit.cli import run
    run(main)
