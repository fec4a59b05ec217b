"""The formats minivit reads, each as: valid seed files written by minivit's own writers (tiny
models, small images), the mutations that make hostile ones, the public loaders that must
refuse them, and the check of what a loader returns.

A seed is a tree {relative path: bytes} (None: a folder); `root` is what the loader is given
(a file of the tree, or "" for the folder itself).
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import mutate as M


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass
class Format:
    name: str
    doc: str
    seeds: Callable[[], list]              # -> [tree]; called once, cached
    loaders: Callable[[], dict]            # -> {name: fn(path) -> result}, imported lazily
    mutators: dict                         # kind -> fn(rng, tree) -> tree
    root: str = ""                         # what the loader is given, relative to the case folder
    needs: tuple = ()                      # modules without which the format is skipped
    check: Callable = None                 # fn(result) -> None, or a string saying what is wrong
    main: str = ""                         # the file byte mutations prefer
    raises: bool = True                    # False: the loader never raises (damage is skipped)
    _seeds: list = field(default=None, repr=False)

    def missing(self) -> list:
        return [m for m in self.needs if not has(m)]

    def seed_trees(self) -> list:
        if self._seeds is None:
            self._seeds = self.seeds()
        return self._seeds


# ---- tree helpers -------------------------------------------------------------------------------
def _read_tree(folder: str) -> dict:
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), folder)] = None
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def _file_of(tree: dict, rng, prefer: str = "") -> str | None:
    names = [k for k, v in tree.items() if v is not None]
    if not names:
        return None
    if prefer and rng.random() < 0.5:
        preferred = [k for k in names if k.endswith(prefer)]
        if preferred:
            return rng.choice(preferred)
    return rng.choice(names)


def on_file(fn, pick: str = "", suffix: str | tuple = ""):
    """A byte mutator (rng, bytes) -> bytes as a tree mutator on one file (whose name ends with
    suffix, when given; preferring `pick`)."""
    def mutator(rng, tree):
        names = [k for k, v in tree.items() if v is not None and k.endswith(suffix or "")]
        if not names:
            return tree
        name = _file_of({k: tree[k] for k in names}, rng, pick)
        return {**tree, name: fn(rng, tree[name])}
    return mutator


def byte_mutators(pick: str = "") -> dict:
    return {k: on_file(fn, pick) for k, fn in M.BYTE_MUTATORS.items()}


def drop_file(rng, tree):
    names = [k for k in tree if tree[k] is not None]
    if not names:
        return tree
    out = dict(tree)
    del out[rng.choice(names)]
    return out


def _with_tmp(write) -> dict:
    """Run write(folder) in a temporary folder and return what it wrote as a tree."""
    with tempfile.TemporaryDirectory() as d:
        write(d)
        return _read_tree(d)


# ---- models -------------------------------------------------------------------------------------
def _model(seed=0, pre=None, **cfg):
    from minivit import ViT, ViTConfig
    base = dict(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8, depth=1,
                heads=2, mlp_ratio=2.0)
    m = ViT(ViTConfig(**{**base, **cfg}), seed=seed, preprocessing=pre)
    rng = np.random.default_rng(seed)
    for k, v in m.params.items():
        v[...] = rng.standard_normal(v.shape) * 0.3 + (1.0 if "norm" in k and k.endswith(".w")
                                                     else 0.0)
    return m


def _pre(channels=1, **kw):
    from minivit import Preprocessing
    return Preprocessing(**{"mean": [0.5] * channels, "std": [0.25] * channels, "image_size": 8,
                            "channels": channels, "class_names": ["a", "b", "c"], **kw})


def _is_model(result):
    from minivit import ViT
    if not isinstance(result, ViT):
        return f"returned {type(result).__name__}, not a ViT"
    bad = [k for k, v in result.params.items() if not np.isfinite(np.asarray(v)).all()]
    if bad:
        return f"loaded non-finite parameters {bad[:3]}"
    return None


# ---- minivit checkpoints ------------------------------------------------------------------------
def _ckpt_seeds():
    from minivit.io import save_checkpoint
    from minivit.optim import AdamW

    def write(d):
        m = _model(pre=_pre())
        opt = AdamW(m.params, lr=1e-3)
        save_checkpoint(os.path.join(d, "a.npz"), m, opt, step=3, epoch=1,
                        rng_state=m.rng.bit_generator.state,
                        extra={"best_acc": 0.5, "history": [{"epoch": 1, "test_acc": 0.5}]})
        m2 = _model(seed=1, pos_embed="sincos", num_registers=1, layer_scale=0.1, depth=2)
        save_checkpoint(os.path.join(d, "b.npz"), m2, step=0, epoch=0)
    files = _with_tmp(write)
    a, b = files["a.npz"], files["b.npz"]
    deflated = M.zip_build([(n, p, zipfile.ZIP_DEFLATED) for n, p, _ in M.zip_members(a)])
    return [{"model.npz": a}, {"model.npz": b}, {"model.npz": deflated}]


def _v1_seeds():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "fixtures", "v1_checkpoint.npz"), "rb") as f:
        fixture = f.read()
    members = M.zip_members(fixture)
    out = [{"model.npz": fixture}]
    meta = next(json.loads(_npy_payload(p)) for n, p, _ in members if n == "meta.npy")
    meta["extra"] = {"mean": [0.5], "std": [0.25]}                # no class names
    out.append({"model.npz": M.zip_build(
        [(n, _npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8))
          if n == "meta.npy" else p, c) for n, p, c in members])})
    return out


def _npy_payload(data: bytes) -> bytes:
    return M.npy_parse(data)[2]


def _npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _meta_mutate(rng, data: bytes) -> bytes:
    """The 'meta' member: its JSON (config, preprocessing, optimizer, ...) edited."""
    parsed = M.npy_parse(data)
    if parsed is None:
        return data
    keys = ("format_version", "config", "step", "epoch", "optimizer", "extra", "preprocessing",
            "rng_state", "optimizer.class", "extra.mean", "extra.std", "extra.class_names",
            "preprocessing.mean", "preprocessing.std", "preprocessing.class_names",
            "preprocessing.image_size", "preprocessing.resize_size", "preprocessing.channels",
            "config.image_size", "config.patch_size", "config.dim", "config.depth",
            "config.heads", "config.mlp_ratio", "config.num_classes", "config.in_channels",
            "config.pos_embed", "config.eps", "config.dtype", "config.num_registers",
            "config.representation_size", "config.layer_scale", "config.dropout",
            "config.gelu", "config.pool", "config.class_token", "config.distilled")
    text = parsed[2]
    if rng.random() < 0.15:
        new = M.text_edit(rng, text.decode("utf-8", "replace")).encode("utf-8", "replace")
    else:
        new = M.json_mutate(rng, text, keys)
    if rng.random() < 0.3:                                # a config that is valid but huge
        try:
            meta = json.loads(new)
            meta["config"][rng.choice(("image_size", "depth", "dim", "num_classes"))] = \
                rng.choice((10 ** 6, 2 ** 31, 7 * 10 ** 5, 4096))
            new = json.dumps(meta).encode()
        except Exception:
            pass
    return _npy_bytes(np.frombuffer(new, np.uint8))


def npz_mutators(meta: bool) -> dict:
    member = {"*": M.npy_mutate}
    if meta:
        member["meta.npy"] = lambda rng, d: (_meta_mutate(rng, d) if rng.random() < 0.7
                                             else M.npy_mutate(rng, d))
    out = {**byte_mutators(), "zip": on_file(lambda rng, d: M.zip_mutate(rng, d, member)),
           "zip-fields": on_file(M.zip_fields),
           "npy-header": on_file(lambda rng, d: M.zip_mutate(rng, d, {"*": M.npy_mutate}))}
    if meta:
        out["meta"] = on_file(_meta_in_zip)
    return out


def _meta_in_zip(rng, data: bytes) -> bytes:
    """The 'meta' member of a checkpoint edited (its CRC right)."""
    try:
        members = M.zip_members(data)
    except Exception:
        return M.bitflip(rng, data)
    return M.zip_build([(n, _meta_mutate(rng, p) if n == "meta.npy" else p, c)
                        for n, p, c in members])


def _ckpt_loaders():
    from minivit.io import load_checkpoint, load_pretrained
    from minivit.optim import AdamW

    def with_optimizer(p):
        m = _model()
        return load_checkpoint(p, m, AdamW(m.params, lr=1e-3))
    return {"load_checkpoint": load_checkpoint, "load_checkpoint+AdamW": with_optimizer,
            "load_pretrained": load_pretrained}


def _check_meta(result):
    if isinstance(result, dict):
        for k in ("step", "epoch"):
            if not isinstance(result.get(k), int) or isinstance(result.get(k), bool):
                return f"meta[{k!r}] is {result.get(k)!r}, not an integer"
        if not isinstance(result.get("extra") or {}, dict):
            return f"meta['extra'] is {type(result['extra']).__name__}, not an object"
        result = result["model"]
    return _is_model(result)


# ---- Google .npz --------------------------------------------------------------------------------
def _google_seeds():
    from minivit.io import save_google_npz

    def write(d):
        save_google_npz(_model(eps=1e-6, gelu="tanh"), os.path.join(d, "a.npz"))
        save_google_npz(_model(seed=2, representation_size=6, in_channels=3, depth=2),
                        os.path.join(d, "b.npz"))
    files = _with_tmp(write)
    prefixed = M.zip_build([("opt/target/" + n, p, c) for n, p, c in M.zip_members(files["a.npz"])])
    return [{"model.npz": files["a.npz"]}, {"model.npz": files["b.npz"]}, {"model.npz": prefixed}]


def _google_loaders():
    from minivit.io import load_google_npz, load_pretrained
    return {"load_google_npz": load_google_npz, "load_pretrained": load_pretrained}


# ---- Hugging Face and timm folders --------------------------------------------------------------
HF_KEYS = ("model_type", "architectures", "hidden_act", "num_attention_heads", "layer_norm_eps",
           "layerscale_value", "use_swiglu_ffn", "qkv_bias", "id2label", "id2label.0",
           "label2id", "image_size", "patch_size", "num_channels", "hidden_size",
           "num_register_tokens", "mlp_ratio")
PRE_KEYS = ("do_rescale", "rescale_factor", "image_mean", "image_std", "do_normalize",
            "resample", "size", "size.height", "size.width", "size.shortest_edge",
            "do_center_crop", "crop_size", "crop_size.height", "do_resize")
TIMM_KEYS = ("architecture", "num_classes", "global_pool", "model_args", "model_args.num_heads",
             "model_args.no_embed_class", "model_args.global_pool", "model_args.act_layer",
             "model_args.init_values", "model_args.qkv_bias", "model_args.class_token",
             "model_args.qk_norm", "pretrained_cfg", "pretrained_cfg.input_size",
             "pretrained_cfg.crop_pct", "pretrained_cfg.crop_mode", "pretrained_cfg.mean",
             "pretrained_cfg.std", "pretrained_cfg.interpolation", "pretrained_cfg.label_names",
             "label_names", "layer_norm_eps")
INDEX_KEYS = ("weight_map", "metadata", "weight_map.x")


def _hf_seeds():
    from minivit.io import save_pretrained
    pre = dict(resize_size=10, resize_mode="shortest", center_crop=True, resample="bicubic")
    rgb = dict(in_channels=3, gelu="erf", eps=1e-12)
    models = [
        _model(pre=_pre(3, **pre), **rgb),
        _model(seed=1, pre=_pre(3), distilled=True, **rgb),
        _model(seed=2, pre=_pre(3, **pre), layer_scale=1.0, num_classes=0, **rgb),
        _model(seed=3, pre=_pre(3), layer_scale=1.0, num_classes=0, num_registers=1, **rgb),
        _model(seed=4, num_classes=0, representation_size=8, **rgb),
    ]
    out = []
    for m in models:
        out.append(_with_tmp(lambda d, m=m: save_pretrained(m, d, format="hf")))
    return out


def _timm_seeds():
    from minivit.io import save_pretrained
    rgb = dict(in_channels=3, gelu="erf", eps=1e-6)
    models = [
        _model(pre=_pre(3, resize_size=9, resize_mode="shortest", center_crop=True), **rgb),
        _model(seed=1, pre=_pre(3), layer_scale=1e-5, pos_embed_cls=False, num_registers=2,
               **rgb),
        _model(seed=2, pre=None, class_token=False, pool="mean", fc_norm=True, **rgb),
        _model(seed=3, pre=_pre(3), distilled=True, **rgb),
    ]
    return [_with_tmp(lambda d, m=m: save_pretrained(m, d, format="timm")) for m in models]


def _sharded_seeds():
    from minivit.io import read_safetensors, write_safetensors
    out = []
    for tree in _hf_seeds()[:3]:
        def write(d, tree=tree):
            for k, v in tree.items():
                if k != "model.safetensors":
                    with open(os.path.join(d, k), "wb") as f:
                        f.write(v)
            with open(os.path.join(d, "full.safetensors"), "wb") as f:
                f.write(tree["model.safetensors"])
            arrays, _ = read_safetensors(os.path.join(d, "full.safetensors"))
            os.remove(os.path.join(d, "full.safetensors"))
            keys = sorted(arrays)
            names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
            half = len(keys) // 2
            for name, part in zip(names, (keys[:half], keys[half:])):
                write_safetensors({k: arrays[k] for k in part}, os.path.join(d, name))
            index = {"metadata": {"total_size": 0},
                     "weight_map": {k: names[0] if i < half else names[1]
                                    for i, k in enumerate(keys)}}
            with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
                json.dump(index, f)
        out.append(_with_tmp(write))
    return out


def _folder_mutators(json_keys: dict) -> dict:
    """For a checkpoint folder: byte mutations on any file, safetensors-aware ones, JSON ones
    on each JSON file (with the keys its reader looks for), and a file removed."""
    out = {**byte_mutators(".safetensors"),
           "safetensors": on_file(M.st_mutate, suffix=".safetensors"), "drop-file": drop_file}
    for name, keys in json_keys.items():
        out[f"json:{name}"] = on_file(functools.partial(_json_mut, keys=keys), suffix=name)
    return out


def _json_mut(rng, data, keys):
    return M.json_mutate(rng, data, keys)


def _hf_loaders(bare: str = "model.safetensors"):
    from minivit.io import describe_pretrained, load_pretrained
    return {"load_pretrained": load_pretrained, "describe_pretrained": describe_pretrained,
            "load_pretrained(file)": lambda p: load_pretrained(os.path.join(p, bare)),
            "load_pretrained(file, heads=2)": lambda p: load_pretrained(os.path.join(p, bare),
                                                                        heads=2)}


def _check_pretrained(result):
    if isinstance(result, dict):                          # describe_pretrained
        return None if "config" in result else "describe_pretrained gave no config"
    return _is_model(result)


# ---- MNIST IDX ----------------------------------------------------------------------------------
IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
             np.float64: 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, IDX_CODES[arr.dtype.type], arr.ndim])
    head += np.asarray(arr.shape, ">u4").tobytes()
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _idx_arrays():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (4, 5, 6)).astype(np.uint8),
            rng.integers(0, 10, 7).astype(np.uint8),
            rng.standard_normal((2, 3)).astype(np.float32),
            rng.integers(-300, 300, 5).astype(np.int16),
            rng.standard_normal((2, 2, 2)),
            rng.integers(-9, 9, (3, 1)).astype(np.int32)]


def _idx_seeds():
    return [{"data-idx3-ubyte": idx_bytes(a)} for a in _idx_arrays()]


def _idx_gz_seeds():
    return [{"data-idx3-ubyte.gz": gzip.compress(idx_bytes(a), mtime=0)} for a in _idx_arrays()]


def _idx_loaders():
    from minivit.data.mnist import read_idx
    return {"read_idx": read_idx}


def _is_array(result):
    if not isinstance(result, np.ndarray):
        return f"returned {type(result).__name__}, not an array"
    return None


# ---- images -------------------------------------------------------------------------------------
def _pil_bytes(arr, mode, fmt, **kw) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if mode and im.mode != mode:
        im = im.convert(mode)
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_seeds():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (7, 9)).astype(np.uint8)
    rgb = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    return [{"img.png": _pil_bytes(gray, "L", "PNG")},
            {"img.png": _pil_bytes(rgb, "RGB", "PNG")},
            {"img.png": _pil_bytes(np.dstack([rgb, rgb[..., :1]]), "RGBA", "PNG")},
            {"img.png": _pil_bytes(gray, "P", "PNG")},
            {"img.png": _pil_bytes(gray, "1", "PNG")},
            {"img.png": _pil_bytes(gray.astype(np.uint16) * 200, "I;16", "PNG")},
            {"img.png": _pil_bytes(gray, "LA", "PNG")}]


def _jpeg_seeds():
    rng = np.random.default_rng(0)
    gray = (np.add.outer(np.arange(16), np.arange(16)) * 8 % 256).astype(np.uint8)
    rgb = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    return [{"img.jpg": _pil_bytes(gray, "L", "JPEG", quality=90)},
            {"img.jpg": _pil_bytes(rgb, "RGB", "JPEG", quality=75)},
            {"img.jpg": _pil_bytes(rgb, "RGB", "JPEG", progressive=True)},
            {"img.jpg": _pil_bytes(rgb, "CMYK", "JPEG")}]


def _npy_image_seeds():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    arrays = [u8, rng.integers(0, 256, (6, 6, 3)).astype(np.uint8),
              rng.integers(0, 256, (3, 5, 5)).astype(np.uint8), rng.random((8, 8)).astype(np.float32),
              rng.integers(0, 256, (1, 4, 4)).astype(np.int16), np.asfortranarray(u8[:, :6]),
              rng.random((4, 4, 1)), u8.astype(">u2")]
    return [{"img.npy": _npy_bytes(a)} for a in arrays]


def _image_loaders():
    from minivit.data.imagefolder import read_image
    return {"read_image": read_image, "read_image(size=6)": lambda p: read_image(p, 6)}


def _is_image(result):
    if not isinstance(result, np.ndarray) or result.dtype != np.uint8 or result.ndim != 3 \
            or result.shape[0] not in (1, 3):
        return f"returned {getattr(result, 'dtype', type(result))} " \
               f"{getattr(result, 'shape', '')}, not a uint8 (C, H, W) image"
    return None


# ---- image folders ------------------------------------------------------------------------------
def _folder_seeds():
    rng = np.random.default_rng(0)

    def img(shape=(6, 6)):
        return _npy_bytes(rng.integers(0, 256, shape).astype(np.uint8))
    flat = {"a": None, "b": None, **{f"{c}/{i}.npy": img() for c in "ab" for i in range(3)}}
    split = {**{f"{s}/{c}/{i}.npy": img() for s in ("train", "test") for c in "ab"
                for i in range(2)}}
    rgb = {"a": None, "b": None, "c": None,
           **{f"{c}/{i}.npy": img((6, 6, 3) if i else (6, 6)) for c in "abc" for i in range(2)}}
    out = [flat, split, rgb]
    if has("PIL"):
        out.append({"a/0.png": _pil_bytes(rng.integers(0, 256, (6, 6)).astype(np.uint8), "L",
                                          "PNG"),
                    "a/1.npy": img(), "b/0.jpg": _pil_bytes(
                        rng.integers(0, 256, (6, 6, 3)).astype(np.uint8), "RGB", "JPEG"),
                    "b/1.npy": img()})
    return out


def _folder_tree_mutate(rng, tree):
    """Structure: remove, add, rename or move entries of an image folder."""
    tree = dict(tree)
    files = [k for k, v in tree.items() if v is not None]
    dirs = sorted({os.path.dirname(k) for k in files if os.path.dirname(k)})
    r = rng.random()
    if r < 0.25 and files:
        del tree[rng.choice(files)]
    elif r < 0.4:
        tree[rng.choice(("c", "train/c", "test/z", "a/sub", ".hidden", "z/x.npy"))] = None
    elif r < 0.6:
        where = rng.choice(dirs + [""]) if dirs else ""
        name = rng.choice(("x.npy", "x.png", "x.jpg", "x.txt", ".x.npy", "X.NPY", "noext", "c"))
        src = rng.choice(files) if files else None
        tree[os.path.join(where, name)] = tree[src] if src and rng.random() < 0.7 else \
            rng.choice((b"", b"\x00", b"not an image"))
    elif r < 0.8 and files:
        src = rng.choice(files)
        base, ext = os.path.splitext(src)
        tree[base + rng.choice((".png", ".npy", ".jpg", ".jpeg", ".txt"))] = tree.pop(src)
    elif files and dirs:
        src = rng.choice(files)
        tree[os.path.join(rng.choice(dirs), "m" + os.path.basename(src))] = tree.pop(src)
    return tree


def _image_file_mutate(rng, data: bytes) -> bytes:
    if data[:6] == M.NPY_MAGIC:
        return M.npy_mutate(rng, data)
    if data[:8] == M.PNG_SIG:
        return M.png_mutate(rng, data)
    if data[:2] == b"\xff\xd8":
        return M.jpeg_mutate(rng, data)
    return M.bitflip(rng, data)


def _folder_loaders():
    from minivit.data.imagefolder import load_image_folder
    return {"load_image_folder": load_image_folder,
            "load_image_folder(6, 3)": lambda p: load_image_folder(p, image_size=6, channels=3),
            "load_image_folder(4, 1)": lambda p: load_image_folder(p, image_size=4, channels=1)}


def _is_dataset(result):
    x = getattr(result, "x_train", None)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
        return f"returned {type(result).__name__} without uint8 (M, C, S, S) images"
    return None


# ---- metrics.jsonl ------------------------------------------------------------------------------
def _metrics_seeds():
    recs = [{"epoch": e, "step": 10 * e, "lr": 1e-3, "train_loss": 2.0 / e, "train_acc": 0.3 * e,
             "test_acc": 0.25 * e, "epoch_time_s": 1.5, "images_per_s": 100.0, "wall_s": 2.0 * e}
            for e in (1, 2, 3)]
    text = "".join(json.dumps(r) + "\n" for r in recs)
    return [{"metrics.jsonl": text.encode()},
            {"metrics.jsonl": (text + json.dumps(recs[1]) + "\n").encode()},
            {"metrics.jsonl": text[:-20].encode()}]


def _lines_mutate(rng, data: bytes) -> bytes:
    """Lines dropped, doubled, swapped, cut; a record's value of any JSON type; a line of
    invalid UTF-8, deep nesting or a huge number."""
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    r = rng.random()
    if r < 0.35:
        keys = ("epoch", "train_loss", "train_acc", "test_acc", "step", "lr", "images_per_s")
        lines[i] = M.json_mutate(rng, lines[i], keys)
    elif r < 0.5:
        del lines[i]
    elif r < 0.6:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif r < 0.7:
        lines[i] = lines[i][:rng.randrange(len(lines[i]) + 1)]
    else:
        lines.insert(i, rng.choice((b"\xff\xfe\x80", b"\xc3", b"[" * 100000, b'{"epoch": ' * 5000,
                                    b'{"epoch": 1e999}', b'{"epoch": ' + b"9" * 5000 + b"}",
                                    b'{"epoch": 2, "test_acc": "x"}', b'{"epoch": true}',
                                    b'{"epoch": 1.0}', b"NaN", b"\x00" * 10, b'"epoch"',
                                    b'{"epoch": 2}', b"{" + b" " * 100000 + b"}")))
    return b"\n".join(lines)


def _metrics_loaders():
    try:
        from minivit.training.loop import read_metrics
    except ImportError:                                    # the trainer needs what is missing
        return {}
    return {"read_metrics": lambda p: read_metrics(p, 3),
            "read_metrics(upto=1)": lambda p: read_metrics(p, 1)}


RECORD_FIELDS = ("train_loss", "train_acc", "test_acc")  # what plot_curves reads


def _check_metrics(result):
    if not isinstance(result, list):
        return f"returned {type(result).__name__}, not a list"
    epochs = []
    for r in result:
        if not isinstance(r, dict) or not isinstance(r.get("epoch"), int) \
                or isinstance(r.get("epoch"), bool):
            return f"a record without an integer epoch: {str(r)[:80]}"
        bad = [k for k in RECORD_FIELDS if not isinstance(r.get(k), (int, float))
               or isinstance(r.get(k), bool)]
        if bad:
            return f"a record whose {bad} are not numbers (plot_curves reads them): {str(r)[:80]}"
        epochs.append(r["epoch"])
    if epochs != sorted(set(epochs)):
        return f"epochs {epochs} are not one per epoch in order"
    return None


# ---- the registry -------------------------------------------------------------------------------
def _npz(name, doc, seeds, loaders, meta, check):
    return Format(name, doc, seeds, loaders, npz_mutators(meta), root="model.npz", check=check)


def _lazy(fn):
    """Loaders are imported when first used (an import error then names the format)."""
    cache = {}

    def get():
        if "v" not in cache:
            cache["v"] = fn()
        return cache["v"]
    return get


FORMATS = {f.name: f for f in [
    _npz("checkpoint", "minivit checkpoints (format 2; with AdamW state, sincos/registers, "
         "deflated)", _ckpt_seeds, _lazy(_ckpt_loaders), True, _check_meta),
    _npz("checkpoint-v1", "minivit checkpoints of format 1 (tests/fixtures/v1_checkpoint.npz)",
         _v1_seeds, _lazy(_ckpt_loaders), True, _check_meta),
    _npz("google", "Google vit_jax .npz (plain, pre-logits, opt/target/ prefix)", _google_seeds,
         _lazy(_google_loaders), False, _is_model),
    Format("hf", "transformers folders: config.json, preprocessor_config.json, "
           "model.safetensors (ViT, DeiT, DINOv2, pooler)", _hf_seeds, _lazy(_hf_loaders),
           _folder_mutators({"config.json": HF_KEYS, "preprocessor_config.json": PRE_KEYS}),
           needs=("safetensors",), check=_check_pretrained, main=".safetensors"),
    Format("timm", "timm folders: config.json (model_args, pretrained_cfg), model.safetensors",
           _timm_seeds, _lazy(_hf_loaders),
           _folder_mutators({"config.json": TIMM_KEYS}), needs=("safetensors",),
           check=_check_pretrained, main=".safetensors"),
    Format("sharded", "transformers folders with model.safetensors.index.json and two shards",
           _sharded_seeds,
           _lazy(lambda: {**{k: v for k, v in _hf_loaders("model.safetensors.index.json").items()
                             if "heads" not in k}}),
           _folder_mutators({"config.json": HF_KEYS, "index.json": INDEX_KEYS}),
           needs=("safetensors",), check=_check_pretrained, main=".safetensors"),
    Format("idx", "MNIST IDX files, raw", _idx_seeds, _lazy(_idx_loaders),
           {**byte_mutators(), "idx": on_file(M.idx_mutate)}, root="data-idx3-ubyte",
           check=_is_array),
    Format("idx-gz", "MNIST IDX files, gzip-compressed", _idx_gz_seeds, _lazy(_idx_loaders),
           {**byte_mutators(), "gz": on_file(lambda rng, d: M.gz_mutate(rng, d, M.idx_mutate))},
           root="data-idx3-ubyte.gz", check=_is_array),
    Format("png", "PNG images (L, RGB, RGBA, P, 1, I;16, LA)", _png_seeds, _lazy(_image_loaders),
           {**byte_mutators(), "png": on_file(M.png_mutate)}, root="img.png", needs=("PIL",),
           check=_is_image),
    Format("jpeg", "JPEG images (gray, RGB, progressive, CMYK)", _jpeg_seeds,
           _lazy(_image_loaders), {**byte_mutators(), "jpeg": on_file(M.jpeg_mutate)},
           root="img.jpg", needs=("PIL",), check=_is_image),
    Format("npy-image", ".npy images (2-D, HWC, CHW, float, int16, Fortran, big-endian)",
           _npy_image_seeds, _lazy(_image_loaders),
           {**byte_mutators(), "npy": on_file(M.npy_mutate)}, root="img.npy", check=_is_image),
    Format("image-folder", "image folders (class sub-folders, train/test split, mixed files)",
           _folder_seeds, _lazy(_folder_loaders),
           {**byte_mutators(), "image": on_file(_image_file_mutate), "tree": _folder_tree_mutate},
           check=_is_dataset),
    Format("metrics", "metrics.jsonl as read on --resume (training/loop.py read_metrics)",
           _metrics_seeds, _lazy(_metrics_loaders),
           {**byte_mutators(), "lines": on_file(_lines_mutate)}, check=_check_metrics,
           raises=False),
]}
