"""Read and write the .npz checkpoints of google-research/vision_transformer (vit_jax).

The files (ViT-B_16.npz, ...) hold the Flax parameter tree flattened with '/' separators, as
vit_jax/checkpoint.py and timm's npz loader (`_load_weights`) read it. TOP and BLOCK below are
its key table (io/layout.py), with these transforms:

    embedding/kernel (p, p, C, D), a HWIO conv                      patch_embed.w    hwio
    embedding/bias (D,), cls (1, 1, D)                              patch_embed.b, cls_token
    Transformer/posembed_input/pos_embedding (1, N, D)              pos_embed
    Transformer/encoderblock_{i}/
        LayerNorm_0/{scale,bias} (D,)                               norm1
        MultiHeadDotProductAttention_1/{query,key,value}/kernel (D, H, Dh), /bias (H, Dh)
                                                                    attn.qkv   qkv_heads(_b)
        MultiHeadDotProductAttention_1/out/kernel (H, Dh, D)        attn.proj.w  out_heads
        MultiHeadDotProductAttention_1/out/bias (D,)                attn.proj.b
        LayerNorm_2/{scale,bias} (D,)                               norm2
        MlpBlock_3/Dense_0/kernel (D, F), /bias (F,)                mlp.fc1
        MlpBlock_3/Dense_1/kernel (F, D), /bias (D,)                mlp.fc2
    Transformer/encoder_norm/{scale,bias} (D,)                      norm
    [pre_logits/kernel (D, R), /bias (R,)]                          pre_logits
    head/kernel (R or D, K), head/bias (K,)                         head

Flax Dense kernels are already (in, out), like our y = x @ w + b ('same'). The HWIO kernel
reshaped to (p*p*C, D) has row (i*p + j)*C + c, the order of layers.embed.patchify, so a HWIO
conv over NHWC images is our patch linear; the per-head kernels reshape to (D, H*Dh) with the
heads contiguous, as in attn.qkv.w. Files are written in the Flax tree's order.

The file stores weights only. Flax's defaults are assumed on load: GELU with the tanh
approximation (jax.nn.gelu approximate=True), LayerNorm eps 1e-6, CLS-token pooling; pass
overrides (gelu='erf', ...) for anything else. What the layout cannot hold of a minivit model
(its GELU, eps, class names and preprocessing) save_google_npz writes beside the file, in
NAME.minivit.json (sidecar_path); a load reads it back when it is there (overrides still win),
so a model converted to this layout and back keeps its logits and labels. Unsupported: 'gap' classifier files (no CLS token)
and hybrid R50+ViT files; minivit's fixed 'sincos' table has no place in this layout.

Loading reads the file one member at a time (GoogleNpzReader): when it opens, the zip's entries
and every member's .npy header are checked as files.read_npz checks them (never unpickling,
nothing allocated from a header before it is checked), and the arrays' shapes and dtypes go to
the layout; then build_model reads each member the model needs, checks its data (size, CRC,
NaN or inf), copies it into the flat parameter vector and lets it go, so the weights are held
once. read_google_npz reads every array at once (files.read_npz). Anything wrong with a file
raises GoogleNpzError naming it, including NaN or inf in a weight unless allow_nonfinite=True.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from .. import backend
from ..config import Preprocessing, ViTConfig
from ..errors import UserError
from ..files import FileFormatError, NpzReader, atomic_write, check_finite, read_npz
from ..model import ViT
from .layout import (Layout, block_count, build_model, check_layout, check_overrides, dims,
                     from_layout, key_table, layout_of, layout_shapes, make_config, mlp_ratio_for,
                     module_order, to_layout)

__all__ = ["GoogleNpzError", "GoogleNpzReader", "load_google_npz", "save_google_npz",
           "read_google_npz",
           "google_config", "google_shapes", "check_google_arrays", "from_google", "to_google",
           "google_layout", "google_table", "google_target"]

PREFIXES = ("opt/target/", "params/")    # Flax optimizer target / big_vision-style trees
QKV = ("query", "key", "value")
ATTN = "MultiHeadDotProductAttention_1/"
POS = "Transformer/posembed_input/pos_embedding"
TOP = {"patch_embed.w": ("hwio", "embedding/kernel"), "patch_embed.b": ("same", "embedding/bias"),
       "cls_token": ("same", "cls"), "pos_embed": ("same", POS),
       "norm.w": ("same", "Transformer/encoder_norm/scale"),
       "norm.b": ("same", "Transformer/encoder_norm/bias"),
       "pre_logits.w": ("same", "pre_logits/kernel"), "pre_logits.b": ("same", "pre_logits/bias"),
       "head.w": ("same", "head/kernel"), "head.b": ("same", "head/bias")}
BLOCK = {"norm1.w": ("same", "LayerNorm_0/scale"), "norm1.b": ("same", "LayerNorm_0/bias"),
         "attn.qkv.w": ("qkv_heads", tuple(f"{ATTN}{n}/kernel" for n in QKV)),
         "attn.qkv.b": ("qkv_heads_b", tuple(f"{ATTN}{n}/bias" for n in QKV)),
         "attn.proj.w": ("out_heads", ATTN + "out/kernel"),
         "attn.proj.b": ("same", ATTN + "out/bias"),
         "norm2.w": ("same", "LayerNorm_2/scale"), "norm2.b": ("same", "LayerNorm_2/bias"),
         "mlp.fc1.w": ("same", "MlpBlock_3/Dense_0/kernel"),
         "mlp.fc1.b": ("same", "MlpBlock_3/Dense_0/bias"),
         "mlp.fc2.w": ("same", "MlpBlock_3/Dense_1/kernel"),
         "mlp.fc2.b": ("same", "MlpBlock_3/Dense_1/bias")}
WHAT = "the vit_jax layout"
FILE = "a vit_jax .npz"
RESAMPLE = dict(method="bilinear", align_corners=True)   # load_google_npz's default
FIX = "download or export it again"
NONFINITE_FIX = "download it again, or pass allow_nonfinite=True to inspect it"


class GoogleNpzError(FileFormatError):
    """A file that is not a usable vit_jax .npz; the message names the file, the problem and the
    fix. GoogleNpzError.NotFound (also a FileNotFoundError) when the file does not exist."""


# ---- layout -------------------------------------------------------------------------------------
def google_table(cfg: ViTConfig) -> dict:
    """{minivit key: (transform, vit_jax key)} for cfg (io/layout.py)."""
    return key_table(cfg, TOP, BLOCK, "Transformer/encoderblock_{}/", WHAT)


def google_shapes(cfg: ViTConfig) -> dict[str, tuple]:
    """Every key of a vit_jax checkpoint for this config, with its shape, in file order."""
    return module_order(layout_shapes(google_table(cfg), cfg))


def check_google_arrays(arrays: dict, cfg: ViTConfig) -> None:
    """Raise one ValueError listing every missing, unknown, misshapen or non-float array."""
    check_layout(arrays, google_table(cfg), cfg, WHAT)


def from_google(arrays: dict, cfg: ViTConfig) -> dict[str, np.ndarray]:
    """Google-named host arrays (checked by check_google_arrays) -> minivit's flat params."""
    return from_layout(arrays, google_table(cfg), cfg)


def to_google(params: dict, cfg: ViTConfig) -> dict[str, np.ndarray]:
    """minivit's flat params (host arrays) -> Google-named arrays, in google_shapes order."""
    return module_order(to_layout(params, google_table(cfg), cfg))


# ---- reading ------------------------------------------------------------------------------------
def read_google_npz(path, allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """All arrays of an .npz (never unpickling), with an 'opt/target/' or 'params/' prefix
    stripped; with 'opt/target/', the optimizer state under 'opt/' is skipped. GoogleNpzError
    for a bad file, or for NaN or inf in an array unless allow_nonfinite."""
    path = os.fspath(path)
    arrays = read_npz(path, GoogleNpzError, FILE, FIX)
    try:
        arrays = _strip_prefix(arrays)
    except ValueError as e:
        raise GoogleNpzError(f"{path}: {e}") from e
    if not allow_nonfinite:
        check_finite(arrays, path, GoogleNpzError, NONFINITE_FIX)
    return arrays


class GoogleNpzReader:
    """A vit_jax .npz opened to be read one member at a time (module docstring):

        with GoogleNpzReader(path) as npz:
            npz.stand_ins                      # {name: shape and dtype, no data}, prefix stripped
            w = npz.tensor("head/kernel")      # one member, checked (finite, unless allowed)

    The zip entries and .npy headers are checked when it opens (files.NpzReader), each
    member's data when read."""

    def __init__(self, path, allow_nonfinite: bool = False):
        self.allow_nonfinite = allow_nonfinite
        self._npz = NpzReader(path, GoogleNpzError, FILE, FIX)
        self.path = self._npz.path
        try:
            names = _strip_prefix({k: k for k in self._npz.shapes})    # stripped: the member's
        except ValueError as e:
            self.close()
            raise GoogleNpzError(f"{self.path}: {e}") from e
        self._names = names
        self.stand_ins = {}                               # shape and dtype, no data
        for k, member in names.items():
            shape, dtype = self._npz.shapes[member]
            self.stand_ins[k] = np.broadcast_to(np.zeros((), dtype), shape)

    def tensor(self, name: str) -> np.ndarray:
        """Array `name` (its prefix stripped) read from the file, its data checked."""
        a = self._npz.array(self._names[name])
        if not self.allow_nonfinite:
            check_finite({name: a}, self.path, GoogleNpzError, NONFINITE_FIX)
        return a

    def release(self) -> None:
        """Nothing to do: each array read is freed once the caller drops it."""

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> "GoogleNpzReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _strip_prefix(arrays: dict) -> dict:
    """Drop the first prefix of PREFIXES that occurs; keys without it stay (and show as unknown)."""
    for prefix in PREFIXES:
        if not any(k.startswith(prefix) for k in arrays):
            continue
        out = {k: v for k, v in arrays.items() if not k.startswith(prefix)
               and not (prefix == "opt/target/" and k.startswith("opt/"))}   # kept: reported
        for k, v in arrays.items():
            if k.startswith(prefix):
                if k[len(prefix):] in out:
                    raise UserError(f"key {k!r} and {k[len(prefix):]!r} both present; keep one")
                out[k[len(prefix):]] = v
        return out
    return arrays


def google_config(arrays: dict, **overrides) -> ViTConfig:
    """Infer the ViTConfig from the shapes of Google-named arrays. overrides may set only
    fields the file cannot record (layout.OVERRIDABLE: gelu, pool, eps, dtype, dropout, ...)."""
    check_overrides(overrides)
    need = ["embedding/kernel", POS, "head/kernel",
            f"Transformer/encoderblock_0/{ATTN}query/kernel",
            "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise UserError(f"not a vit_jax ViT checkpoint: missing {missing}, needed to infer the "
                        f"architecture (keys present: {sorted(arrays)[:8]}...)")
    shp = {k: arrays[k].shape for k in need}
    kern, pos, head, q, fc1 = (shp[k] for k in need)
    bad = [(k, s) for k, s, nd in zip(need, (kern, pos, head, q, fc1), (4, 3, 2, 3, 2))
           if len(s) != nd]
    if bad or kern[0] != kern[1] or pos[0] != 1:
        raise UserError(f"cannot infer the architecture from these shapes: {bad or shp}; "
                        f"expected embedding/kernel (p, p, C, D), pos_embedding (1, N, D), "
                        f"query/kernel (D, H, Dh), Dense_0/kernel (D, F), head/kernel (R|D, K)")
    p, C, D = kern[0], kern[2], kern[3]
    _check_grid(arrays, pos[1])
    R = dims(arrays, "pre_logits/kernel", 2)[1] if "pre_logits/kernel" in arrays else None
    fields = dict(image_size=math.isqrt(pos[1] - 1) * p, patch_size=p, in_channels=C,
                  num_classes=head[-1], dim=D, heads=q[1], mlp_ratio=mlp_ratio_for(D, fc1[1]),
                  depth=block_count(arrays, "Transformer/encoderblock_"), pos_embed="learned",
                  representation_size=R, gelu="tanh", eps=1e-6, pool="cls")
    return make_config(fields, overrides)


def _check_grid(arrays: dict, N: int) -> None:
    """The pos table must be 1 CLS row + a square grid; 'gap' files have no CLS row."""
    g = math.isqrt(max(N - 1, 0))
    if g > 0 and g * g == N - 1 and "cls" in arrays:
        return
    if "cls" not in arrays and math.isqrt(N) ** 2 == N:
        raise UserError(f"this checkpoint has no 'cls' token and a {math.isqrt(N)}^2-row position "
                        f"table: a classifier='gap' (global average pooling) model, which "
                        f"minivit does not support; use a classifier='token' checkpoint")
    if g == 0 or g * g != N - 1:
        raise UserError(f"pos_embedding has N={N} rows, not 1 (CLS) + grid^2 for a square grid; "
                        f"only square token grids with a CLS row are supported")


def google_preprocessing(cfg: ViTConfig) -> Preprocessing:
    """vit_jax feeds pixels scaled to [-1, 1]: mean = std = 0.5 of pixel / 255 per channel.
    The files carry no class names."""
    C = cfg.in_channels
    return Preprocessing(mean=[0.5] * C, std=[0.5] * C, image_size=cfg.image_size, channels=C)


def google_layout(arrays: dict, conf: dict | None = None, pre_conf: dict | None = None,
                  **overrides) -> Layout:
    """The Layout of Google-named arrays. conf: what the file's sidecar holds (read_sidecar:
    gelu, eps, preprocessing), the defaults that overrides replace; pre_conf unused."""
    extras = conf or {}
    defaults = {k: extras[k] for k in ("gelu", "eps") if k in extras}
    cfg = google_config(arrays, **{**defaults, **overrides})
    pre = extras.get("preprocessing") or google_preprocessing(cfg)
    return Layout(cfg, google_table(cfg), arrays, pre, WHAT, "vit_jax VisionTransformer",
                  RESAMPLE)


# ---- the sidecar: what the layout cannot hold ---------------------------------------------------
SIDECAR = ".minivit.json"
SIDECAR_FORMAT = "minivit: what a vit_jax .npz cannot hold"


def sidecar_path(path) -> str:
    """NAME.minivit.json beside NAME.npz."""
    path = os.fspath(path)
    return (path[:-4] if path.endswith(".npz") else path) + SIDECAR


def read_sidecar(path) -> dict:
    """{'gelu', 'eps', 'preprocessing' (a Preprocessing or None)} from the sidecar beside the
    .npz at path, or {} when there is none. A damaged one raises GoogleNpzError naming it."""
    side = sidecar_path(path)
    if not os.path.isfile(side):
        return {}
    fix = (f"delete it to load {os.fspath(path)} with vit_jax's defaults, or convert the model "
           f"again")
    try:
        with open(side, "rb") as f:
            data = json.loads(f.read(1 << 20).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise GoogleNpzError(f"{side} cannot be read ({type(e).__name__}: {e}); {fix}") from e
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise GoogleNpzError(f"{side} is not the file minivit writes beside a Google .npz; {fix}")
    gelu, eps, pre = data.get("gelu"), data.get("eps"), data.get("preprocessing")
    if gelu not in ("tanh", "erf") or not isinstance(eps, (int, float)) or isinstance(eps, bool) \
            or not math.isfinite(eps) or eps <= 0 or not isinstance(pre, (dict, type(None))):
        raise GoogleNpzError(f"{side} holds gelu={gelu!r}, eps={eps!r}, preprocessing of type "
                             f"{type(pre).__name__}: not a GELU ('tanh', 'erf'), a positive eps "
                             f"and an object or null; {fix}")
    try:
        pre = None if pre is None else Preprocessing.from_dict(pre)
    except (TypeError, ValueError) as e:
        raise GoogleNpzError(f"{side}: its preprocessing is invalid ({e}); {fix}") from e
    return {"gelu": gelu, "eps": float(eps), "preprocessing": pre}


def write_sidecar(model: ViT, path) -> None:
    """The model's GELU, eps and preprocessing (class names included) beside its .npz."""
    pre = model.preprocessing
    data = {"format": SIDECAR_FORMAT, "gelu": model.config.gelu, "eps": model.config.eps,
            "preprocessing": None if pre is None else pre.to_dict()}
    atomic_write(sidecar_path(path), lambda f: f.write(json.dumps(data, indent=2).encode()))


# ---- public entry points ------------------------------------------------------------------------
def load_google_npz(path, image_size: int | None = None, *, resize_method: str = "bilinear",
                    align_corners: bool = True, seed: int = 0, allow_nonfinite: bool = False,
                    **overrides) -> ViT:
    """A ViT with the weights of a vit_jax .npz. The architecture comes from the shapes;
    overrides set gelu/pool/dropout/attn_dropout/drop_path/eps/dtype. image_size, when it
    differs from the file's, resamples the position grid (ViT.set_image_size). A bad file
    raises GoogleNpzError naming it; NaN or inf weights too, unless allow_nonfinite."""
    check_overrides(overrides)                            # the caller's mistake, not the file's
    path = os.fspath(path)
    with GoogleNpzReader(path, allow_nonfinite) as npz:
        lay = layout_of(path, GoogleNpzError, google_layout, npz.stand_ins, read_sidecar(path),
                        **overrides)
        return build_model(lay, seed, image_size, source=npz, method=resize_method,
                           align_corners=align_corners)


def google_target(cfg: ViTConfig, exact: bool = False) -> None:
    """ValueError saying why the vit_jax layout cannot hold this model's weights, if it cannot;
    exact: also when it would load back only with pool='mean' (save_pretrained's rule)."""
    if cfg.pos_embed != "learned":
        raise UserError("save_google_npz needs pos_embed='learned': the Google layout stores a "
                        "learned position table, and minivit's fixed 'sincos' table has none")
    odd = [name for name, bad in (("no CLS token", not cfg.class_token),
                                  ("a distillation token", cfg.distilled),
                                  ("register tokens", cfg.num_registers),
                                  ("LayerScale", cfg.layer_scale is not None),
                                  ("a position table without the CLS row", not cfg.pos_embed_cls),
                                  ("mean pooling", exact and cfg.pool != "cls"),
                                  ("no head", not cfg.num_classes)) if bad]
    if odd:
        raise UserError(f"the Google vit_jax layout holds the original ViT; this model has "
                        f"{', '.join(odd)}: save it with format='timm' or 'hf'")


def save_google_npz(model: ViT, path) -> None:
    """Write the model's weights as a vit_jax .npz (atomically: temp file + os.replace; an
    OSError becomes files.WriteError naming the path, and the old file stays).
    The layout holds weights only: the GELU, eps and preprocessing (class names included) go
    into NAME.minivit.json beside it (write_sidecar), which the loaders read back."""
    google_target(model.config)
    host = {k: backend.to_numpy(v) for k, v in model.params.items()}
    arrays = to_google(host, model.config)
    atomic_write(os.fspath(path), lambda f: np.savez(f, **arrays))
    write_sidecar(model, path)
