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
read (safetensors_file.refuse_pickle). Then one path for every foreign layout (layout.py): the
format's function (google_layout, hf_layout, timm_layout) reads the config, key table and
preprocessing (resize, crop, mean, std, class names) from the files; layout_of checks the
tensors against the table; build_model fills the ViT.

The weights are streamed, never read whole: the files are opened first (every safetensors
header, or every .npz member header, checked), the layout is found from the tensors' shapes
and dtypes alone, and build_model reads each parameter's tensors (memory-mapped safetensors,
one .npz member at a time), checks they are finite, copies them into the model's flat
parameter vector and releases them before the next: the process holds one copy of the
weights. describe_pretrained runs the same functions on the headers alone.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import NamedTuple, Optional

import numpy as np

from .. import backend
from ..errors import UserError
from ..files import FileFormatError, atomic_write, check_finite
from ..model import ViT
from .google import (GoogleNpzError, GoogleNpzReader, google_layout, google_target, read_sidecar,
                     save_google_npz)
from .hf import hf_layout, to_hf
from .layout import Layout, build_model, check_overrides, layout_of
from .safetensors_file import (PICKLE_SUFFIXES, SafetensorsError, SafetensorsReader,
                               read_safetensors_header, refuse_pickle, write_safetensors)
from .timm import timm_layout, to_timm

__all__ = ["load_pretrained", "save_pretrained", "describe_pretrained", "find_source",
           "PretrainedError", "FORMATS", "Source"]

FORMATS = ("hf", "timm", "google", "minivit")
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
FIX = "download the checkpoint again (config.json and model.safetensors)"
NONFINITE_FIX = "download it again, or pass allow_nonfinite=True to inspect it"


class PretrainedError(FileFormatError):
    """A checkpoint folder or file that cannot be loaded: names it, the problem and the fix."""


# format -> (the function that reads its Layout, the error naming its files)
LAYOUTS = {"google": (google_layout, GoogleNpzError), "hf": (hf_layout, PretrainedError),
           "timm": (timm_layout, PretrainedError)}


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
            fmt = _npz_format(path)
            extras = read_sidecar(path) if fmt == "google" else {}
            return Source(fmt, [path], extras, None, path)
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
    weight_map = conf.get("weight_map") or {}
    if not isinstance(weight_map, dict):
        raise PretrainedError(f"{index}: its weight_map is not an object of tensor names and "
                              f"files; {FIX}")
    bad = [f for f in weight_map.values() if not isinstance(f, str) or not f
           or os.path.basename(f) != f or f in (".", "..")]
    if bad:
        raise PretrainedError(f"{index}: its weight_map names {bad[0]!r}, not the name of a "
                              f"file beside it (shards lie in the index's folder); {FIX}")
    files = sorted(set(weight_map.values()))
    if not files:
        raise PretrainedError(f"{index}: no weight_map; {FIX}")
    folder = os.path.dirname(os.path.abspath(index))
    for f in files:
        refuse_pickle(os.path.join(folder, f))
    return [os.path.join(folder, f) for f in files]


def _json(path: str, missing: Optional[dict] = None):
    """The JSON object in path, or `missing` when there is no such file."""
    if not os.path.isfile(path):
        return missing
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise PretrainedError(f"{path}: cannot read it as JSON ({type(e).__name__}: {e}); "
                              f"{FIX}") from e
    if not isinstance(out, dict):
        raise PretrainedError(f"{path}: not a JSON object; {FIX}")
    return out


def _npz_format(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            return "minivit" if "meta.npy" in z.namelist() else "google"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return "google"                                   # its reader names what is wrong


class SafetensorsFiles:
    """The safetensors files of a checkpoint (one, or an index's shards) as build_model's source
    (layout.py): every header is checked when they open; stand_ins holds each tensor's shape and
    dtype; tensor(name) reads it from its file (of two files that hold a name, the later one)
    and, unless allow_nonfinite, checks that it is finite."""

    def __init__(self, paths: list, allow_nonfinite: bool = False):
        self.allow_nonfinite = allow_nonfinite
        self.readers = []
        try:
            for p in paths:
                self.readers.append(SafetensorsReader(p))
        except BaseException:
            self.close()
            raise
        self.where = {k: r for r in self.readers for k in r.tensors}
        self.stand_ins = {k: v for r in self.readers for k, v in r.stand_ins().items()}

    def tensor(self, name: str) -> np.ndarray:
        reader = self.where[name]
        a = reader.tensor(name)
        if not self.allow_nonfinite:
            check_finite({name: a}, reader.path, SafetensorsError, NONFINITE_FIX)
        return a

    def release(self) -> None:
        for r in self.readers:
            r.release()

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def __enter__(self) -> "SafetensorsFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(src: Source, allow_nonfinite: bool = False):
    """The weight files of src opened for streaming: a SafetensorsFiles or a GoogleNpzReader."""
    if src.format == "google":
        return GoogleNpzReader(src.path, allow_nonfinite)
    return SafetensorsFiles(src.weights, allow_nonfinite)


def _layout(src: Source, arrays: dict, overrides: dict) -> Layout:
    make, error = LAYOUTS[src.format]
    return layout_of(src.path, error, make, arrays, src.config, src.preprocessor, **overrides)


# ---- loading ------------------------------------------------------------------------------------
def load_pretrained(path, *, seed: int = 0, allow_nonfinite: bool = False, **overrides) -> ViT:
    """A ViT with the weights, labels and preprocessing of a checkpoint in any layout minivit
    reads (module docstring). overrides (layout.OVERRIDABLE): dtype, image_size (the position
    table is resampled as the source does it), eps, gelu, pool, dropout, attn_dropout,
    drop_path, heads (for timm or bare files that do not record it)."""
    check_overrides(overrides)
    src = find_source(path)
    image_size = overrides.pop("image_size", None)
    if src.format == "minivit":
        return _load_minivit(src.path, image_size, allow_nonfinite, overrides)
    with _open(src, allow_nonfinite) as files:
        lay = _layout(src, files.stand_ins, overrides)
        return build_model(lay, seed, image_size, source=files)


def _load_minivit(path: str, image_size, allow_nonfinite: bool, overrides: dict) -> ViT:
    from .checkpoint import load_checkpoint
    model = load_checkpoint(path, allow_nonfinite=allow_nonfinite)["model"]
    overrides.pop("heads", None)                          # recorded in the checkpoint
    if overrides:
        cfg = dataclasses.replace(model.config, **overrides)
        every = set(cfg.param_shapes()) == set(model.params)   # all copied: no random init
        new = ViT(cfg, preprocessing=model.preprocessing, init=not every)
        for k, v in model.params.items():
            new.params[k] = backend.to_numpy(v)
        model = new
    if image_size is not None and image_size != model.config.image_size:
        model.set_image_size(image_size)
    return model


def describe_pretrained(path, **overrides) -> dict:
    """What a checkpoint holds: format, architecture, config, preprocessing, parameter and
    tensor counts and dtypes; safetensors files are read from their headers only."""
    check_overrides(overrides)
    src = find_source(path)
    overrides.pop("image_size", None)
    if src.format == "minivit":
        model = load_pretrained(src.path, **overrides)
        pre = model.preprocessing
        return {"format": src.format, "config": model.config.to_dict(),
                "preprocessing": None if pre is None else pre.to_dict(),
                "parameters": model.num_params()}
    with _open(src) as files:
        arrays = files.stand_ins
        if src.format == "google":
            dtypes = [a.dtype.name for a in arrays.values()]
        else:
            dtypes = [code for r in files.readers for code, *_ in r.tensors.values()]
    lay = _layout(src, arrays, overrides)
    return {"format": src.format, "architecture": lay.architecture,
            "config": lay.config.to_dict(), "preprocessing": lay.preprocessing.to_dict(),
            "parameters": sum(int(np.prod(s)) for s in lay.config.param_shapes().values()),
            "tensors": len(arrays), "dtypes": {d: dtypes.count(d) for d in sorted(set(dtypes))}}


# ---- saving -------------------------------------------------------------------------------------
def save_pretrained(model: ViT, path, format: str = "hf") -> None:
    """Write the model as format: 'hf' or 'timm' (path is a folder: model.safetensors and
    config.json, plus preprocessor_config.json for 'hf'; transformers' from_pretrained and
    timm.create_model('local-dir:PATH') load them with no missing or unexpected keys), or
    'google' (path is the .npz). Class names and preprocessing go with the model. A model
    the layout cannot hold exactly is a ValueError that says which format can."""
    if format not in ("hf", "timm", "google"):
        raise UserError(f"format={format!r} is not one of 'hf', 'timm', 'google' (minivit's own "
                        f"checkpoints: minivit.io.save_checkpoint)")
    cfg, pre = model.config, model.preprocessing
    if format == "google":
        google_target(cfg, exact=True)
        save_google_npz(model, path)                      # GELU, eps, labels: in its sidecar
        return
    host = {k: backend.to_numpy(v) for k, v in model.params.items()}
    table = None if model.pos_table is None else backend.to_numpy(model.pos_table)
    if format == "hf":
        tensors, conf, pre_conf = to_hf(host, cfg, pre, table)
    else:
        (tensors, conf), pre_conf = to_timm(host, cfg, pre, table), None
    path = os.fspath(path)
    if os.path.isfile(path):
        raise UserError(f"{path} is a file; format={format!r} writes a folder (config.json, "
                        f"{WEIGHTS})")
    os.makedirs(path, exist_ok=True)
    write_safetensors(tensors, os.path.join(path, WEIGHTS))
    _write_json(os.path.join(path, "config.json"), conf)
    if pre_conf is not None:
        _write_json(os.path.join(path, "preprocessor_config.json"), pre_conf)


def _write_json(path: str, obj: dict) -> None:
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
