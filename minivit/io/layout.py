"""What every foreign layout (io/google.py, io/hf.py, io/timm.py) shares: a key table from
minivit's parameter names to the file's tensor names, each entry with one shape transform,
and the one path from a file's tensors to a model.

    same        the same array                       cls_token, biases, LayerNorm, LayerScale,
                                                     Flax Dense kernels (already (in, out))
    linear      torch Linear weight (out, in) = w.T  our linear weights are (in, out)
    conv        torch Conv2d weight (D, C, p, p)     our patch_embed.w (p*p*C, D), row
                                                     (i*p + j)*C + c (layers.embed.patchify)
    hwio        Flax Conv kernel (p, p, C, D)        the same rows: a reshape
    qkv         three (out, in) weights [q, k, v]    our attn.qkv.w (D, 3D) = [q | k | v]
    qkv_b       three (D,) biases                    our attn.qkv.b (3D,)
    qkv_heads   three Flax (D, H, Dh) kernels        attn.qkv.w, heads contiguous in each third
    qkv_heads_b three Flax (H, Dh) biases            attn.qkv.b
    out_heads   Flax (H, Dh, D) output kernel        our attn.proj.w (D, D), row h*Dh + d

A table is {minivit key: (transform, file key)} (a tuple of three file keys for the qkv
transforms); key_table builds one from a layout's top-level and per-block entries.
from_layout / to_layout apply it both ways and check_layout lists every missing, unknown,
misshapen and non-float tensor at once.

Loading, for every layout: check_overrides (what a caller may set), then the layout's own
function reads the config from the file's shapes and JSON and returns a Layout
(make_config builds its ViTConfig), layout_of checks the tensors against its table, and
build_model fills a ViT and resamples the position table the way the source does.

The layout functions read shapes and dtypes only, so a loader hands them stand-ins (arrays that
hold no data) and build_model a source that reads the file's tensors one at a time
(safetensors_file.SafetensorsReader, google.GoogleNpzReader): each parameter is read,
transformed and copied into the flat vector, and its tensors are released before the next, so
the weights are held once, in the model. The model starts as zeros (ViT(init=False): no random
init to overwrite) when the table sets every parameter.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import numpy as np

from ..config import Preprocessing, ViTConfig
from ..errors import UserError
from ..model import ViT

OVERRIDABLE = ("dtype", "image_size", "eps", "gelu", "pool", "dropout", "attn_dropout",
               "drop_path", "heads")
HYBRID = ("conv_root/", "block1/", "patch_embed.backbone.")   # ResNet stems of hybrid models


def _conv_load(a, cfg):
    D, C, p, _ = a.shape
    return a.transpose(2, 3, 1, 0).reshape(p * p * C, D)             # (p*p*C, D)


def _conv_save(w, cfg):
    p, C, D = cfg.patch_size, cfg.in_channels, cfg.dim
    return w.reshape(p, p, C, D).transpose(3, 2, 0, 1)               # (D, C, p, p)


def _split3(v, axis):
    return tuple(np.split(v, 3, axis=axis))


def _heads(cfg):
    return cfg.heads, cfg.head_dim                                   # H, Dh


# transform: (file arrays -> ours, ours -> file arrays, our shape -> file shape(s))
TRANSFORMS = {
    "same": (lambda a, cfg: a, lambda v, cfg: v, lambda s, cfg: s),
    "linear": (lambda a, cfg: a.T, lambda v, cfg: v.T, lambda s, cfg: s[::-1]),
    "conv": (_conv_load, _conv_save,
             lambda s, cfg: (cfg.dim, cfg.in_channels, cfg.patch_size, cfg.patch_size)),
    "hwio": (lambda a, cfg: a.reshape(-1, cfg.dim),                          # (p*p*C, D)
             lambda v, cfg: v.reshape(cfg.patch_size, cfg.patch_size, cfg.in_channels, cfg.dim),
             lambda s, cfg: (cfg.patch_size, cfg.patch_size, cfg.in_channels, cfg.dim)),
    "qkv": (lambda a, cfg: np.concatenate([x.T for x in a], axis=1),        # (D, 3D)
            lambda v, cfg: tuple(x.T for x in _split3(v, 1)),                # 3 x (D, D)
            lambda s, cfg: ((s[1] // 3, s[0]),) * 3),
    "qkv_b": (lambda a, cfg: np.concatenate(a), lambda v, cfg: _split3(v, 0),
              lambda s, cfg: ((s[0] // 3,),) * 3),
    "qkv_heads": (lambda a, cfg: np.concatenate([x.reshape(cfg.dim, -1) for x in a], axis=1),
                  lambda v, cfg: tuple(x.reshape(cfg.dim, *_heads(cfg)) for x in _split3(v, 1)),
                  lambda s, cfg: ((cfg.dim, *_heads(cfg)),) * 3),           # 3 x (D, H, Dh)
    "qkv_heads_b": (lambda a, cfg: np.concatenate([x.reshape(-1) for x in a]),   # (3D,)
                    lambda v, cfg: tuple(x.reshape(_heads(cfg)) for x in _split3(v, 0)),
                    lambda s, cfg: (_heads(cfg),) * 3),                      # 3 x (H, Dh)
    "out_heads": (lambda a, cfg: a.reshape(-1, cfg.dim),                     # (H*Dh, D)
                  lambda v, cfg: v.reshape(*_heads(cfg), cfg.dim),
                  lambda s, cfg: (*_heads(cfg), cfg.dim)),                   # (H, Dh, D)
}


class Layout(NamedTuple):
    """A checkpoint's tensors as minivit reads them: what google_layout, hf_layout and
    timm_layout find from a file's tensor names, shapes and JSON."""
    config: ViTConfig             # from the shapes (and config.json), the overrides applied
    table: dict                   # {minivit key: (transform, file key(s))}
    arrays: dict                  # the file's tensors under the table's names
    preprocessing: Preprocessing  # resize, crop, mean, std, class names
    what: str                     # "the vit_jax layout", for messages
    architecture: str             # the source's model class or name
    resample: dict                # set_image_size keywords: how the source resamples its table
    image_size: Optional[int] = None   # the size the source runs at, when not its table's
    ignored: tuple = ()           # file keys that may be present and are not read
    names: Optional[dict] = None  # {key of arrays: the file's tensor name}, where they differ


# ---- key tables ---------------------------------------------------------------------------------
def key_table(cfg: ViTConfig, top: dict, block: dict, block_prefix: str, what: str) -> dict:
    """{minivit key: (transform, file key(s))} for cfg: top-level parameters from `top`, block
    i's from `block` (by short name) under block_prefix.format(i); ValueError naming a
    parameter the layout has no place for."""
    table = {}
    for k in cfg.param_shapes():
        if k.startswith("blocks."):
            _, i, short = k.split(".", 2)
            entry, pre = block.get(short), block_prefix.format(i)
        else:
            entry, pre = top.get(k), ""
        if entry is None:
            raise UserError(f"{k}: {what} has no place for this parameter; save the model in "
                            f"another format")
        kind, key = entry
        table[k] = (kind, tuple(pre + x for x in key) if isinstance(key, tuple) else pre + key)
    return table


def layout_shapes(table: dict, cfg: ViTConfig) -> dict:
    """{file key: shape} the table expects for cfg, in table order."""
    ours = cfg.param_shapes()
    out = {}
    for k, (kind, key) in table.items():
        shape = TRANSFORMS[kind][2](ours[k], cfg)
        if isinstance(key, tuple):
            out.update(zip(key, (tuple(s) for s in shape)))
        else:
            out[key] = tuple(shape)
    return out


def from_layout(arrays: dict, table: dict, cfg: ViTConfig) -> dict:
    """File-named host arrays (checked by check_layout) -> {minivit key: array}."""
    out = {}
    for k, (kind, key) in table.items():
        a = tuple(arrays[x] for x in key) if isinstance(key, tuple) else arrays[key]
        out[k] = TRANSFORMS[kind][0](a, cfg)
    return out


def to_layout(params: dict, table: dict, cfg: ViTConfig) -> dict:
    """{minivit key: host array} -> file-named contiguous arrays, in table order."""
    out = {}
    for k, (kind, key) in table.items():
        v = TRANSFORMS[kind][1](params[k], cfg)
        if isinstance(key, tuple):
            out.update(zip(key, v))
        else:
            out[key] = v
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def module_order(d: dict, sep: str = "/") -> dict:
    """d with its keys grouped by module (the path before the last sep), the modules in order of
    first appearance: a Flax tree's order, where query/kernel and query/bias sit together."""
    groups: dict = {}
    for k, v in d.items():
        groups.setdefault(k.rpartition(sep)[0] or k, {})[k] = v
    return {k: v for g in groups.values() for k, v in g.items()}


def check_layout(arrays: dict, table: dict, cfg: ViTConfig, what: str,
                 ignored: tuple = ()) -> None:
    """Raise one ValueError listing every missing, unknown, misshapen or non-float tensor;
    `ignored` file keys (e.g. DINOv2's mask_token, used only in pre-training) may be present."""
    want = layout_shapes(table, cfg)
    missing = [k for k in want if k not in arrays]
    unknown = sorted(k for k in arrays if k not in want and k not in ignored)
    misshapen = [f"{k}: got {tuple(arrays[k].shape)}, expected {want[k]}" for k in want
                 if k in arrays and tuple(arrays[k].shape) != want[k]]
    nonfloat = [f"{k}: {arrays[k].dtype}" for k in want
                if k in arrays and arrays[k].dtype.kind != "f"]
    if not (missing or unknown or misshapen or nonfloat):
        return
    R = f", representation_size={cfg.representation_size}" if cfg.representation_size else ""
    lines = [f"the tensors do not match {what} of a ViT with patch={cfg.patch_size}, "
             f"dim={cfg.dim}, depth={cfg.depth}, heads={cfg.heads}, mlp_dim={cfg.mlp_dim}, "
             f"classes={cfg.num_classes}{R}:"]
    for title, items in (("missing keys", missing), ("unknown keys", unknown),
                         ("misshapen keys", misshapen), ("non-float arrays", nonfloat)):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12])
                         + (f" and {len(items) - 12} more" if len(items) > 12 else ""))
    if any(k.startswith(HYBRID) for k in arrays):
        lines.append("  (ResNet keys found: hybrid R50+ViT checkpoints are not supported)")
    lines.append("  the file holds another architecture (qk-norm, SwiGLU, hybrid and attention-"
                 "pool models are not supported), or it was edited: re-export it from a plain "
                 "ViT, or fix the listed keys")
    raise UserError("\n".join(lines))


# ---- the JSON beside the weights ----------------------------------------------------------------
MAX_SIDE = 16384            # the largest image side a config file may name (pixels)
MAX_PATCHES = 1 << 16       # the most patches a size read from a file may give (a 256^2 grid)


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


JSON_KINDS = {   # kind -> (test, what it is called in a message)
    "int": (_integer, "an integer"),
    "number": (_finite_number, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "numbers": (lambda v: _finite_number(v) or (isinstance(v, list) and len(v) > 0
                                                 and all(map(_finite_number, v))),
                "a finite number or a non-empty list of them"),
    "strs": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
             "a list of strings"),
    "side": (lambda v: _integer(v) and 1 <= v <= MAX_SIDE,
             f"an image side of 1..{MAX_SIDE} pixels"),
    "size": (lambda v: (_integer(v) and 1 <= v <= MAX_SIDE) or (
        isinstance(v, dict) and all(_integer(x) and 1 <= x <= MAX_SIDE for x in v.values())),
        f"an image side of 1..{MAX_SIDE} pixels or an object of them"),
    "sides": (lambda v: isinstance(v, list) and all(_integer(x) and 1 <= x <= MAX_SIDE
                                                    for x in v),
              f"a list of sizes of 1..{MAX_SIDE}"),
}


def check_json(doc: dict, schema: dict, what: str, _prefix: str = "") -> None:
    """ValueError naming the first key of doc (a config file's JSON object) whose value has the
    wrong JSON type: schema is {key: kind of JSON_KINDS, with '?' when null is allowed, or a
    nested schema for an object}. Keys the schema does not name are not read, and not checked."""
    for key, kind in schema.items():
        if key not in doc:
            continue
        v, name = doc[key], _prefix + key
        if isinstance(kind, dict):
            if v is None:
                continue
            if not isinstance(v, dict):
                raise UserError(_json_message(what, name, v, "an object"))
            check_json(v, kind, what, name + ".")
            continue
        if v is None and kind.endswith("?"):
            continue
        test, called = JSON_KINDS[kind.rstrip("?")]
        if not test(v):
            raise UserError(_json_message(what, name, v, called))


def _json_message(what: str, name: str, v, called: str) -> str:
    shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
    return (f"{what}: {name!r} is {shown} ({_json_type(v)}), not {called}: the file was edited "
            f"or damaged; download it again or fix that entry")


def _json_type(v) -> str:
    return {type(None): "null", bool: "a boolean", int: "an integer", float: "a number",
            str: "a string", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def dims(arrays: dict, key: str, ndim: int) -> tuple:
    """The shape of arrays[key], which must have ndim dimensions (ValueError naming it)."""
    shape = tuple(arrays[key].shape)
    if len(shape) != ndim:
        raise UserError(f"tensor {key!r} has shape {shape}, not {ndim} dimensions: the file is "
                        f"damaged or holds another architecture")
    return shape


# ---- configs ------------------------------------------------------------------------------------
def check_overrides(overrides: dict) -> None:
    """The one check of what a caller may set when loading any checkpoint: only fields the file
    cannot record (OVERRIDABLE); ValueError naming the others and why."""
    known = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown ViTConfig fields {unknown} (these are not ViTConfig fields: "
                        f"check the spelling; overridable: {', '.join(OVERRIDABLE)})")
    if overrides.get("pos_embed") == "sincos":
        raise UserError("pos_embed='sincos' is unsupported when loading a checkpoint: every "
                        "layout carries a learned position table; load it with the learned "
                        "table (the default)")
    fixed = sorted(set(overrides) - set(OVERRIDABLE))
    if fixed:
        raise UserError(f"{fixed} are fixed by the checkpoint's shapes and cannot be overridden; "
                        f"use image_size= to change the resolution (the position table is "
                        f"resampled) and model.reset_head() to change the classes "
                        f"(overridable: {', '.join(OVERRIDABLE)})")


def make_config(fields: dict, overrides: dict) -> ViTConfig:
    """ViTConfig(**fields) with the caller's overrides on top; ValueError saying so if the
    combination is not a valid config."""
    try:
        return ViTConfig(**{**fields, **overrides})
    except ValueError as e:
        raise UserError(f"the checkpoint's shapes and overrides give no valid ViTConfig: "
                        f"{e}") from e


def mlp_ratio_for(D: int, F: int) -> float:
    """A ratio r with int(D * r) == F (ViTConfig computes the MLP width that way)."""
    if D <= 0:
        raise UserError(f"the tensors give the model width {D}: the file is damaged")
    r = F / D
    return r if int(D * r) == F else (F + 0.5) / D


def block_count(arrays: dict, prefix: str) -> int:
    """1 + the largest i of keys '<prefix><i>.' (or '<prefix><i>/'); 0 when there are none."""
    n = -1
    for k in arrays:
        if k.startswith(prefix):
            head = k[len(prefix):].replace("/", ".").split(".", 1)[0]
            if head.isdigit():
                n = max(n, int(head))
    return n + 1


# ---- the one loader path ------------------------------------------------------------------------
def layout_of(path: str, error: type, make, arrays: dict, *args, **overrides) -> Layout:
    """make(arrays, *args, **overrides) (a layout's function), checked against the tensors; any
    ValueError becomes error('path: message')."""
    try:
        lay = make(arrays, *args, **overrides)
        check_layout(lay.arrays, lay.table, lay.config, lay.what, lay.ignored)
    except ValueError as e:
        raise error(f"{path}: {e}") from e
    return lay


def build_model(lay: Layout, seed: int = 0, image_size: Optional[int] = None,
                source=None, **resample) -> ViT:
    """A ViT of lay.config with the file's weights (copied and cast into the flat vector), at
    image_size (default: the size the source runs at), the position table resampled the way
    the source does it (resample= keywords of set_image_size change that). source: where the
    tensors come from, one at a time (module docstring): tensor(file name) -> host array and
    release() once it is copied; None reads lay.arrays, which then hold the data."""
    cfg = lay.config
    every = set(lay.table) == set(cfg.param_shapes())     # key_table makes it so
    model = ViT(cfg, seed=seed, preprocessing=lay.preprocessing, init=not every)
    names = lay.names or {}
    if source is None:
        read = lay.arrays.__getitem__
    else:
        def read(key):
            return source.tensor(names.get(key, key))
    for k, (kind, key) in lay.table.items():
        a = tuple(map(read, key)) if isinstance(key, tuple) else read(key)
        model.params[k] = TRANSFORMS[kind][0](a, cfg)     # cast into the flat vector
        del a                                             # gone before the next one is read
        if source is not None:
            source.release()
    size = image_size or lay.image_size
    if size is not None and size != cfg.image_size:
        model.set_image_size(size, **{**lay.resample, **resample})
    return model
