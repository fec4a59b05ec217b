"""minivit's own checkpoints: one .npz holding the params, the optimizer state and a JSON header.

    params/<name>     every model parameter (host arrays)
    opt.<...>         the optimizer's state_dict(), when an optimizer is saved
    meta              JSON (as uint8 bytes): format version, model config, preprocessing (mean,
                      std, image size, channels, class names), optimizer class and
                      hyperparameters, step, epoch, RNG state, extra
No object arrays, so np.load(allow_pickle=False) reads it. Written atomically (files.atomic_write).
Read through files.read_npz: a missing, empty, truncated, corrupt or hostile file, another format
version and NaN or inf in a parameter or optimizer buffer all raise CheckpointError.
Version 1 files (no typed preprocessing; the trainer kept mean, std and class names in `extra`)
still load: their preprocessing is read from there.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from .. import backend
from ..config import Preprocessing, ViTConfig
from ..files import FileFormatError, atomic_write, check_finite, read_npz

FORMAT_VERSION = 2
READS = (1, 2)                                            # the versions this minivit reads
FIX = "use the other checkpoint of the run (last.npz / best.npz) or train again"
NONFINITE_FIX = ("load an earlier checkpoint of the run, or pass allow_nonfinite=True to "
                 "load_checkpoint to inspect this one")


class CheckpointError(FileFormatError):
    """A checkpoint that cannot be loaded: the message names the file, the problem and the fix.
    CheckpointError.NotFound (also a FileNotFoundError) when the file does not exist."""


def save_checkpoint(path: str, model, optimizer=None, step: int = 0, epoch: int = 0,
                    rng_state=None, extra=None) -> None:
    """Write model params, optimizer state and metadata to path (.npz), atomically: on a full
    disk or an unwritable folder, files.WriteError names the path and the old file stays."""
    pre = model.preprocessing
    meta = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(),
            "preprocessing": None if pre is None else pre.to_dict(),
            "step": int(step), "epoch": int(epoch), "rng_state": rng_state, "extra": extra or {},
            "optimizer": None if optimizer is None else
            {"class": type(optimizer).__name__, **optimizer.hyperparameters()}}
    arrays = {f"params/{k}": backend.to_numpy(v) for k, v in model.params.items()}
    if optimizer is not None:
        arrays.update(optimizer.state_dict())
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_checkpoint(path, allow_nonfinite: bool = False) -> tuple:
    """(meta dict, {name: array}) from a checkpoint file; CheckpointError for a bad file, or for
    NaN or inf in an array unless allow_nonfinite."""
    path = os.fspath(path)
    arrays = read_npz(path, CheckpointError, "a minivit checkpoint", FIX)
    if "meta" not in arrays:
        raise CheckpointError(f"{path} has no 'meta' entry: it is not a minivit checkpoint "
                              f"(for Google ViT .npz files use minivit.io.load_google_npz)")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: its 'meta' header is corrupt ({e}); use the other "
                              f"checkpoint of the run or train again") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its 'meta' header is corrupt (a JSON "
                              f"{type(meta).__name__}, not an object); it is not a minivit checkpoint")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in READS:
        raise CheckpointError(f"{path} has format version {meta.get('format_version')}, this "
                              f"minivit reads versions {READS}; load it with the minivit that "
                              f"wrote it, or train again")
    missing = sorted({"config", "step", "epoch", "optimizer"} - set(meta))
    if missing:
        raise CheckpointError(f"{path}: its 'meta' header lacks {missing}; the file was edited "
                              f"or written by another program")
    problem = _meta_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: its 'meta' header {problem}; the file was edited or "
                              f"written by another program: {FIX}")
    if not allow_nonfinite:
        check_finite({k[len("params/"):] if k.startswith("params/") else k: v
                      for k, v in arrays.items()}, path, CheckpointError, NONFINITE_FIX)
    return meta, arrays


def _meta_problem(meta: dict):
    """What is wrong with the JSON types of a checkpoint's header, or None."""
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    opt = meta["optimizer"]
    for key, ok, what in (
            ("config", isinstance(meta["config"], dict), "an object"),
            ("step", count(meta["step"]), "a non-negative integer"),
            ("epoch", count(meta["epoch"]), "a non-negative integer"),
            ("optimizer", opt is None or isinstance(opt, dict)
             and isinstance(opt.get("class"), str), "null or an object with the optimizer's class"),
            ("extra", isinstance(meta.get("extra"), (dict, type(None))), "an object"),
            ("preprocessing", isinstance(meta.get("preprocessing"), (dict, type(None))),
             "null or an object")):
        if not ok:
            shown = repr(meta[key])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            return f"has {key!r} = {shown}, not {what}"
    flags = [f.name for f in dataclasses.fields(ViTConfig) if f.type in ("bool", bool)]
    bad = [k for k in flags if k in meta["config"] and not isinstance(meta["config"][k], bool)]
    if bad:
        return f"has a config whose {bad} are not true or false"
    return None


def _check_fits(cfg: ViTConfig, params: dict, path: str) -> None:
    """The file's parameters are the config's, in name, shape and dtype; and the model the
    config describes needs nothing big the file does not hold (a fixed position table): all
    checked before the model is built, so that a damaged config allocates nothing."""
    from .layout import MAX_PATCHES
    if cfg.depth > len(params):
        raise CheckpointError(f"{path}: its config has depth={cfg.depth}, more blocks than the "
                              f"{len(params)} parameters it holds can make: the file was edited "
                              f"or damaged; {FIX}")
    want = cfg.param_shapes()
    dtype = np.dtype(cfg.dtype)
    missing, extra = sorted(set(want) - set(params)), sorted(set(params) - set(want))
    wrong = [f"{k}: {params[k].shape} vs {tuple(v)}" for k, v in want.items()
             if k in params and tuple(params[k].shape) != tuple(v)]
    dtypes = [f"{k}: {params[k].dtype} vs {dtype}" for k in want
              if k in params and params[k].dtype != dtype]
    if missing or extra or wrong or dtypes:
        raise CheckpointError(f"{path} does not fit the model: missing {missing}, unexpected "
                              f"{extra}, wrong shapes (file vs model) {wrong}, wrong dtypes "
                              f"{dtypes}; it was written by another model or edited by hand")
    if cfg.pos_embed == "sincos" and (cfg.dim % 4 or cfg.num_patches > MAX_PATCHES):
        raise CheckpointError(f"{path}: its config asks for a fixed sincos position table of "
                              f"{cfg.num_patches} patches x dim {cfg.dim}, which needs a dim "
                              f"divisible by 4 and at most {MAX_PATCHES} patches: the file was "
                              f"edited or damaged; {FIX}")


def load_checkpoint(path, model=None, optimizer=None, *, allow_nonfinite: bool = False) -> dict:
    """Load a checkpoint into model (built from the file's config when None) and optimizer.
    Everything is validated before anything is copied: a bad file never loads in part.
    NaN or inf in the file is refused unless allow_nonfinite (to inspect a diverged model).
    Returns the metadata, with 'model' set to the model."""
    from ..model import ViT

    path = os.fspath(path)
    meta, arrays = read_checkpoint(path, allow_nonfinite)
    values = sum(v.size for k, v in arrays.items() if k.startswith("params/"))
    dim = meta["config"].get("dim")
    if isinstance(dim, int) and dim > max(values, 1):     # before ViTConfig checks it (slowly)
        raise CheckpointError(f"{path}: its config has dim={dim}, more than the {values} "
                              f"parameter values it holds: the file was edited or damaged; "
                              f"{FIX}")
    try:
        cfg = ViTConfig.from_dict(meta["config"])
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise CheckpointError(f"{path}: its model config is invalid ({e}); the file was edited "
                              f"or written by another program: {FIX}") from e
    pre = read_preprocessing(meta, path)
    if model is not None and model.config != cfg:
        diff = {k: (v, getattr(model.config, k)) for k, v in cfg.to_dict().items()
                if getattr(model.config, k) != v}
        raise CheckpointError(f"{path} holds a model with another config (field: (checkpoint, "
                              f"model)) {diff}; build the model from the checkpoint "
                              f"(load_checkpoint(path)) or with the same settings")
    params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    _check_fits(cfg, params, path)
    if model is None:
        model = ViT(cfg)
    opt_arrays = {k: v for k, v in arrays.items() if k.startswith("opt.")}
    if optimizer is not None:
        if meta["optimizer"] is None or meta["optimizer"]["class"] != type(optimizer).__name__:
            raise CheckpointError(f"{path} holds optimizer state of "
                                  f"{(meta['optimizer'] or {}).get('class')}, not "
                                  f"{type(optimizer).__name__}; resume with the same --optimizer")
        try:
            optimizer.load_state_dict(opt_arrays)          # validates before it copies
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
    for k, v in model.params.items():
        v[...] = backend.xp_of(v).asarray(params[k], dtype=v.dtype)   # onto the model's device
    if pre is not None:
        model.preprocessing = pre
    meta["model"] = model
    meta["preprocessing"] = pre
    return meta


def read_preprocessing(meta: dict, path: str):
    """The file's Preprocessing, or None; version 1 files kept it in `extra`."""
    d = meta.get("preprocessing")
    if d is None and meta.get("format_version") == 1:
        extra = meta.get("extra") or {}
        if extra.get("mean") is not None and extra.get("std") is not None:
            d = {"mean": extra["mean"], "std": extra["std"], "class_names": extra.get("class_names"),
                 "image_size": meta["config"].get("image_size"),
                 "channels": meta["config"].get("in_channels")}
    if d is None:
        return None
    try:
        return Preprocessing.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its preprocessing entry is invalid ({e}); the file was "
                              f"edited or written by another program") from e
