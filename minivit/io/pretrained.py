"""load_pretrained / save_pretrained: one entry point for every layout minivit reads and writes.

    model = load_pretrained("vit-base-patch16-224/")          # transformers folder
    model = load_pretrained("vit_base_patch16_224.augreg2/")  # timm folder
    model = load_pretrained("model.safetensors", heads=12)    # a bare file: layout from its keys
    model = load_pretrained("ViT-B_16.npz")                   # Google (or a minivit checkpoint)
    save_pretrained(model, "out/", format="hf")               # or 'timm' (a folder), 'google'

What a path holds is found from its contents: a folder's config.json names timm
('architecture') or transformers ('model_type'); a bare .safetensors file's tensor names say
which layout it is (with the config.json beside it when there is one); an .npz is Google's or,
with a 'meta' entry, minivit's own. Pickle checkpoints are refused by name before any byte is
read (safetensors_file.refuse_pickle). Each loader sets model.preprocessing (resize, crop,
mean, std, class names) from the files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
import zipfile
from typing import NamedTuple, Optional

import numpy as np

from .. import backend
from ..config import ViTConfig
from ..files import FileFormatError, atomic_write, check_finite
from ..model import ViT
from .hf import (class_names_of, from_hf, hf_config, hf_family, hf_pos_resample, hf_preprocessing,
                 hf_table, strip_base_prefix, to_hf)
from .layout import check_layout
from .safetensors_file import (DTYPES, PICKLE_SUFFIXES, SafetensorsError, read_safetensors,
                               read_safetensors_header, refuse_pickle, write_safetensors)
from .timm import TIMM_RESAMPLE, from_timm, timm_config, timm_preprocessing, timm_table, to_timm

__all__ = ["load_pretrained", "save_pretrained", "describe_pretrained", "find_source",
           "PretrainedError", "FORMATS", "Source"]

FORMATS = ("hf", "timm", "google", "minivit")
OVERRIDABLE = ("dtype", "image_size", "eps", "gelu", "dropout", "attn_dropout", "drop_path",
               "heads")
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
FIX = "download the checkpoint again (config.json and model.safetensors)"
NONFINITE_FIX = "download it again, or pass allow_nonfinite=True to inspect it"


class PretrainedError(FileFormatError):
    """A checkpoint folder or file that cannot be loaded: names it, the problem and the fix."""


class Source(NamedTuple):
    """What a path holds: format ('hf' | 'timm' | 'google' | 'minivit'), the weight files,
    config.json and preprocessor_config.json as dicts (or {} / None), and the path itself."""
    format: str
    weights: list
    config: dict
    preprocessor: Optional[dict]
    path: str


# ---- finding the files --------------------------------------------------------------------------
def find_source(path) -> Source:
    """Which layout path holds and where its files are; PretrainedError when it holds none."""
    path = os.fspath(path)
    refuse_pickle(path)
    if os.path.isdir(path):
        folder, weights = path, _folder_weights(path)
    elif os.path.exists(path):
        folder = os.path.dirname(os.path.abspath(path))
        if path.endswith(".npz"):
            return Source(_npz_format(path), [path], {}, None, path)
        if path.endswith(".json"):
            weights = _shards(path)
        elif path.endswith(".safetensors"):
            weights = [path]
        else:
            raise PretrainedError(f"{path}: not a checkpoint minivit reads (a folder with "
                                  f"config.json and model.safetensors, a .safetensors file or "
                                  f"an .npz)")
    else:
        raise PretrainedError.NotFound(f"{path}: no such file or folder; check the path")
    conf = _json(os.path.join(folder, "config.json"), {})
    pre = _json(os.path.join(folder, "preprocessor_config.json"))
    if "architecture" in conf or "pretrained_cfg" in conf:
        fmt = "timm"
    elif "model_type" in conf:
        fmt = "hf"
    else:
        keys = read_safetensors_header(weights[0])[0]
        if "patch_embed.proj.weight" in keys:
            fmt = "timm"
        elif any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
            fmt = "hf"
        else:
            raise PretrainedError(f"{weights[0]}: its tensors are neither transformers' ViT "
                                  f"layout nor timm's (first keys: {sorted(keys)[:5]})")
    return Source(fmt, weights, conf, pre, path)


def _folder_weights(folder: str) -> list:
    if os.path.isfile(os.path.join(folder, WEIGHTS)):
        return [os.path.join(folder, WEIGHTS)]
    if os.path.isfile(os.path.join(folder, INDEX)):
        return _shards(os.path.join(folder, INDEX))
    names = sorted(os.listdir(folder))
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        refuse_pickle(os.path.join(folder, pickles[0]))
    found = [n for n in names if n.endswith(".safetensors")]
    if len(found) == 1:
        return [os.path.join(folder, found[0])]
    raise PretrainedError(f"{folder} holds no {WEIGHTS} (files: {names[:8]}); download it, e.g. "
                          f"huggingface-cli download REPO {WEIGHTS} config.json "
                          f"preprocessor_config.json --local-dir {folder}")


def _shards(index: str) -> list:
    conf = _json(index, {})
    files = sorted(set((conf.get("weight_map") or {}).values()))
    if not files:
        raise PretrainedError(f"{index}: no weight_map; {FIX}")
    folder = os.path.dirname(os.path.abspath(index))
    for f in files:
        refuse_pickle(f)
    return [os.path.join(folder, f) for f in files]


def _json(path: str, missing: Optional[dict] = None):
    """The JSON object in path, or `missing` when there is no such file."""
    if not os.path.isfile(path):
        return missing
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedError(f"{path}: cannot read it as JSON ({e}); {FIX}") from e
    if not isinstance(out, dict):
        raise PretrainedError(f"{path}: not a JSON object; {FIX}")
    return out


def _npz_format(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            return "minivit" if "meta.npy" in z.namelist() else "google"
    except (zipfile.BadZipFile, OSError):
        return "google"                                   # its reader names what is wrong


def _read_arrays(src: Source, allow_nonfinite: bool) -> dict:
    arrays = {}
    for w in src.weights:
        a, _ = read_safetensors(w)
        arrays.update(a)
        if not allow_nonfinite:
            check_finite(a, w, SafetensorsError, NONFINITE_FIX)
    return arrays


# ---- loading ------------------------------------------------------------------------------------
def _check_overrides(overrides: dict) -> None:
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        known = {f.name for f in dataclasses.fields(ViTConfig)}
        what = ("are fixed by the checkpoint's shapes; use image_size= to resample the position "
                "table and model.reset_head() for new classes" if set(unknown) <= known
                else "are not ViTConfig fields")
        raise ValueError(f"{unknown} {what} (overridable: {', '.join(OVERRIDABLE)})")


def load_pretrained(path, *, seed: int = 0, allow_nonfinite: bool = False, **overrides) -> ViT:
    """A ViT with the weights, labels and preprocessing of a checkpoint in any layout minivit
    reads (module docstring). overrides: dtype, image_size (the position table is resampled as
    the source does it), eps, gelu, dropout, attn_dropout, drop_path, heads (for timm or bare
    files that do not record it)."""
    _check_overrides(overrides)
    src = find_source(path)
    image_size = overrides.pop("image_size", None)
    if src.format == "google":
        overrides.pop("heads", None)
        from .google import load_google_npz
        return load_google_npz(src.path, image_size, seed=seed, allow_nonfinite=allow_nonfinite,
                               **overrides)
    if src.format == "minivit":
        return _load_minivit(src.path, image_size, allow_nonfinite, overrides)
    arrays = _read_arrays(src, allow_nonfinite)
    try:
        if src.format == "hf":
            cfg, params, pre, family = from_hf(arrays, src.config, src.preprocessor, **overrides)
            resample = hf_pos_resample(family)
            if image_size is None and family.startswith("dinov2") and pre.image_size:
                image_size = pre.image_size               # transformers resamples to the input
        else:
            cfg, params, pre = from_timm(arrays, src.config, **overrides)
            resample = TIMM_RESAMPLE
    except ValueError as e:
        raise PretrainedError(f"{src.path}: {e}") from e
    model = ViT(cfg, seed=seed, preprocessing=pre)
    for k, v in params.items():
        model.params[k] = v                               # copied (and cast) into the flat vector
    if image_size is not None and image_size != cfg.image_size:
        model.set_image_size(image_size, **resample)
    return model


def _load_minivit(path: str, image_size, allow_nonfinite: bool, overrides: dict) -> ViT:
    from .checkpoint import load_checkpoint
    model = load_checkpoint(path, allow_nonfinite=allow_nonfinite)["model"]
    overrides.pop("heads", None)
    if overrides:
        cfg = dataclasses.replace(model.config, **overrides)
        new = ViT(cfg, preprocessing=model.preprocessing)
        for k, v in model.params.items():
            new.params[k] = backend.to_numpy(v)
        model = new
    if image_size is not None and image_size != model.config.image_size:
        model.set_image_size(image_size)
    return model


def describe_pretrained(path, **overrides) -> dict:
    """What a checkpoint holds, from its headers and JSON only (no tensor is read): format,
    family, config, preprocessing, tensor count and dtypes."""
    _check_overrides(overrides)
    src = find_source(path)
    if src.format in ("google", "minivit"):
        model = load_pretrained(src.path, **overrides)
        pre = model.preprocessing
        return {"format": src.format, "config": model.config.to_dict(),
                "preprocessing": None if pre is None else pre.to_dict(),
                "parameters": model.num_params()}
    stand_ins, dtypes = {}, {}
    for w in src.weights:
        for k, (code, shape, _, _) in read_safetensors_header(w)[0].items():
            dt = np.float32 if code in ("BF16", "F16") else np.dtype(DTYPES[code])
            stand_ins[k] = np.broadcast_to(np.zeros((), dt), shape)   # shape and dtype, no data
            dtypes[code] = dtypes.get(code, 0) + 1
    overrides.pop("image_size", None)
    try:
        if src.format == "hf":
            family, head = hf_family(src.config, stand_ins)
            arrays = strip_base_prefix(stand_ins, family)
            cfg = hf_config(src.config, arrays, family, head, **overrides)
            check_layout(arrays, hf_table(cfg, family, head, prefixed=False), cfg,
                         f"transformers' {family} layout", ignored=("embeddings.mask_token",))
            pre = hf_preprocessing(src.preprocessor, cfg, family,
                                   class_names_of(src.config, cfg.num_classes))
            kind = src.config.get("architectures", [family])[0]
        else:
            cfg = timm_config(src.config, stand_ins, **overrides)
            check_layout(stand_ins, timm_table(cfg), cfg, "timm's VisionTransformer layout")
            pre = timm_preprocessing(src.config, cfg)
            kind = src.config.get("architecture", "timm VisionTransformer")
    except ValueError as e:
        raise PretrainedError(f"{src.path}: {e}") from e
    return {"format": src.format, "architecture": kind, "config": cfg.to_dict(),
            "preprocessing": pre.to_dict(), "parameters": sum(
                int(np.prod(s)) for s in cfg.param_shapes().values()),
            "tensors": len(stand_ins), "dtypes": dtypes}


# ---- saving -------------------------------------------------------------------------------------
def save_pretrained(model: ViT, path, format: str = "hf") -> None:
    """Write the model as format: 'hf' or 'timm' (path is a folder: model.safetensors and
    config.json, plus preprocessor_config.json for 'hf'; transformers' from_pretrained and
    timm.create_model('local-dir:PATH') load them with no missing or unexpected keys), or
    'google' (path is the .npz). Class names and preprocessing go with the model. A model
    the layout cannot hold exactly is a ValueError that says which format can."""
    if format not in ("hf", "timm", "google"):
        raise ValueError(f"format={format!r} is not one of 'hf', 'timm', 'google' (minivit's own "
                         f"checkpoints: minivit.io.save_checkpoint)")
    cfg, pre = model.config, model.preprocessing
    if format == "google":
        _check_google(cfg)
        from .google import save_google_npz
        save_google_npz(model, path)
        return
    host = {k: backend.to_numpy(v) for k, v in model.params.items()}
    table = None if model.pos_table is None else backend.to_numpy(model.pos_table)
    if format == "hf":
        tensors, conf, pre_conf = to_hf(host, cfg, pre, table)
    else:
        (tensors, conf), pre_conf = to_timm(host, cfg, pre, table), None
    path = os.fspath(path)
    if os.path.isfile(path):
        raise ValueError(f"{path} is a file; format={format!r} writes a folder (config.json, "
                         f"{WEIGHTS})")
    os.makedirs(path, exist_ok=True)
    write_safetensors(tensors, os.path.join(path, WEIGHTS))
    _write_json(os.path.join(path, "config.json"), conf)
    if pre_conf is not None:
        _write_json(os.path.join(path, "preprocessor_config.json"), pre_conf)


def _write_json(path: str, obj: dict) -> None:
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _check_google(cfg: ViTConfig) -> None:
    odd = [name for name, bad in (("no CLS token", not cfg.class_token),
                                  ("a distillation token", cfg.distilled),
                                  ("register tokens", cfg.num_registers),
                                  ("LayerScale", cfg.layer_scale is not None),
                                  ("a position table without the CLS row", not cfg.pos_embed_cls),
                                  ("mean pooling", cfg.pool != "cls"),
                                  ("no head", not cfg.num_classes)) if bad]
    if odd:
        raise ValueError(f"the Google vit_jax layout holds the original ViT; this model has "
                         f"{', '.join(odd)}: save it with format='timm' or 'hf'")
    if (cfg.gelu, cfg.eps) != ("tanh", 1e-6):
        warnings.warn(f"the Google layout records weights only and is read with flax's tanh "
                      f"GELU and eps 1e-6; load this file back with gelu={cfg.gelu!r}, "
                      f"eps={cfg.eps}", stacklevel=3)
