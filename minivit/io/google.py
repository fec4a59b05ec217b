"""Read and write the .npz checkpoints of google-research/vision_transformer (vit_jax).

The files (ViT-B_16.npz, ...) hold the Flax parameter tree flattened with '/' separators. The
layout, as read by vit_jax/checkpoint.py and timm's npz loader (`_load_weights`):

    embedding/kernel (p, p, C, D) conv HWIO      embedding/bias (D,)       cls (1, 1, D)
    Transformer/posembed_input/pos_embedding (1, N, D)
    Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias} (D,)
        .../MultiHeadDotProductAttention_1/{query,key,value}/kernel (D, H, Dh), /bias (H, Dh)
        .../MultiHeadDotProductAttention_1/out/kernel (H, Dh, D), /bias (D,)
        .../LayerNorm_2/{scale,bias} (D,)
        .../MlpBlock_3/Dense_0/kernel (D, F), /bias (F,)
        .../MlpBlock_3/Dense_1/kernel (F, D), /bias (D,)
    Transformer/encoder_norm/{scale,bias} (D,)
    [pre_logits/kernel (D, R), pre_logits/bias (R,)]   head/kernel (R or D, K), head/bias (K,)

Mapping to minivit (all Dense kernels are already (in, out), like our y = x @ w + b):
    patch_embed.w (p*p*C, D) = embedding/kernel.reshape(p*p*C, D): row (i*p + j)*C + c, the
        order of layers.embed.patchify, so a HWIO conv over NHWC images == our patch linear.
    attn.qkv.w (D, 3D) = [query | key | value] kernels, each reshaped (D, H*Dh): heads contiguous.
    attn.proj.w (D, D) = out/kernel.reshape(H*Dh, D).

The file stores weights only. Flax's defaults are assumed on load: GELU with the tanh
approximation (jax.nn.gelu approximate=True), LayerNorm eps 1e-6, CLS-token pooling; pass
overrides (gelu='erf', ...) for anything else. Unsupported: 'gap' classifier files (no CLS token)
and hybrid R50+ViT files; minivit's fixed 'sincos' table has no place in this layout.

Reading goes through files.read_npz (never unpickles; every array header is checked before
anything is allocated). Anything wrong with a file raises GoogleNpzError naming it, including
NaN or inf in a weight unless allow_nonfinite=True.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

import numpy as np

from .. import backend
from ..config import Preprocessing, ViTConfig
from ..files import FileFormatError, atomic_write, check_finite, read_npz
from ..model import ViT

__all__ = ["GoogleNpzError", "load_google_npz", "save_google_npz", "read_google_npz",
           "google_config", "google_shapes", "check_google_arrays", "from_google", "to_google"]

PREFIXES = ("opt/target/", "params/")    # Flax optimizer target / big_vision-style trees
OVERRIDABLE = ("gelu", "pool", "dropout", "attn_dropout", "drop_path", "eps", "dtype")
QKV = ("query", "key", "value")
ATTN = "MultiHeadDotProductAttention_1/"
TOP = {"patch_embed.b": "embedding/bias", "cls_token": "cls",           # same array, new name
       "pos_embed": "Transformer/posembed_input/pos_embedding",
       "norm.w": "Transformer/encoder_norm/scale", "norm.b": "Transformer/encoder_norm/bias",
       "pre_logits.w": "pre_logits/kernel", "pre_logits.b": "pre_logits/bias",
       "head.w": "head/kernel", "head.b": "head/bias"}
BLOCK = {"norm1.w": "LayerNorm_0/scale", "norm1.b": "LayerNorm_0/bias",
         "norm2.w": "LayerNorm_2/scale", "norm2.b": "LayerNorm_2/bias",
         "mlp.fc1.w": "MlpBlock_3/Dense_0/kernel", "mlp.fc1.b": "MlpBlock_3/Dense_0/bias",
         "mlp.fc2.w": "MlpBlock_3/Dense_1/kernel", "mlp.fc2.b": "MlpBlock_3/Dense_1/bias",
         "attn.proj.b": ATTN + "out/bias"}
POS = TOP["pos_embed"]
FIX = "download or export it again"
NONFINITE_FIX = "download it again, or pass allow_nonfinite=True to inspect it"


class GoogleNpzError(FileFormatError):
    """A file that is not a usable vit_jax .npz; the message names the file, the problem and the
    fix. GoogleNpzError.NotFound (also a FileNotFoundError) when the file does not exist."""


# ---- layout -------------------------------------------------------------------------------------
def google_shapes(cfg: ViTConfig) -> dict[str, tuple]:
    """Every key of a vit_jax checkpoint for this config, with its shape, in file order."""
    D, H, Dh, F = cfg.dim, cfg.heads, cfg.head_dim, cfg.mlp_dim
    p, C, K, R = cfg.patch_size, cfg.in_channels, cfg.num_classes, cfg.representation_size
    s = {"embedding/kernel": (p, p, C, D), "embedding/bias": (D,), "cls": (1, 1, D),
         POS: (1, cfg.num_tokens, D)}
    for i in range(cfg.depth):
        b = f"Transformer/encoderblock_{i}/"
        s.update({b + "LayerNorm_0/scale": (D,), b + "LayerNorm_0/bias": (D,)})
        for n in QKV:
            s.update({b + ATTN + n + "/kernel": (D, H, Dh), b + ATTN + n + "/bias": (H, Dh)})
        s.update({b + ATTN + "out/kernel": (H, Dh, D), b + ATTN + "out/bias": (D,),
                  b + "LayerNorm_2/scale": (D,), b + "LayerNorm_2/bias": (D,),
                  b + "MlpBlock_3/Dense_0/kernel": (D, F), b + "MlpBlock_3/Dense_0/bias": (F,),
                  b + "MlpBlock_3/Dense_1/kernel": (F, D), b + "MlpBlock_3/Dense_1/bias": (D,)})
    s.update({"Transformer/encoder_norm/scale": (D,), "Transformer/encoder_norm/bias": (D,)})
    if R:
        s.update({"pre_logits/kernel": (D, R), "pre_logits/bias": (R,)})
    s.update({"head/kernel": (R or D, K), "head/bias": (K,)})
    return s


def from_google(arrays: dict, cfg: ViTConfig) -> dict[str, np.ndarray]:
    """Google-named host arrays (checked by check_google_arrays) -> minivit's flat params."""
    D, p, C = cfg.dim, cfg.patch_size, cfg.in_channels
    out = {k: arrays[g] for k, g in TOP.items() if g in arrays}
    out["patch_embed.w"] = arrays["embedding/kernel"].reshape(p * p * C, D)   # (p*p*C, D)
    for i in range(cfg.depth):
        b, m = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out.update({m + k: arrays[b + g] for k, g in BLOCK.items()})
        out[m + "attn.qkv.w"] = np.concatenate(
            [arrays[b + ATTN + n + "/kernel"].reshape(D, D) for n in QKV], axis=1)  # (D, 3D)
        out[m + "attn.qkv.b"] = np.concatenate(
            [arrays[b + ATTN + n + "/bias"].reshape(D) for n in QKV])               # (3D,)
        out[m + "attn.proj.w"] = arrays[b + ATTN + "out/kernel"].reshape(D, D)      # (H*Dh, D)
    return out


def to_google(params: dict, cfg: ViTConfig) -> dict[str, np.ndarray]:
    """minivit's flat params (host arrays) -> Google-named arrays, in google_shapes order."""
    D, H, Dh, p, C = cfg.dim, cfg.heads, cfg.head_dim, cfg.patch_size, cfg.in_channels
    g = {TOP[k]: v for k, v in params.items() if k in TOP}
    g["embedding/kernel"] = params["patch_embed.w"].reshape(p, p, C, D)        # (p, p, C, D)
    for i in range(cfg.depth):
        b, m = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        g.update({b + gk: params[m + k] for k, gk in BLOCK.items()})
        w, bias = params[m + "attn.qkv.w"], params[m + "attn.qkv.b"]          # (D, 3D), (3D,)
        for j, n in enumerate(QKV):
            g[b + ATTN + n + "/kernel"] = w[:, j * D:(j + 1) * D].reshape(D, H, Dh)
            g[b + ATTN + n + "/bias"] = bias[j * D:(j + 1) * D].reshape(H, Dh)
        g[b + ATTN + "out/kernel"] = params[m + "attn.proj.w"].reshape(H, Dh, D)
    return {k: np.ascontiguousarray(g[k]) for k in google_shapes(cfg)}


# ---- reading ------------------------------------------------------------------------------------
def read_google_npz(path, allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """All arrays of an .npz (never unpickling), with an 'opt/target/' or 'params/' prefix
    stripped; with 'opt/target/', the optimizer state under 'opt/' is skipped. GoogleNpzError
    for a bad file, or for NaN or inf in an array unless allow_nonfinite."""
    path = os.fspath(path)
    arrays = read_npz(path, GoogleNpzError, "a vit_jax .npz", FIX)
    try:
        arrays = _strip_prefix(arrays)
    except ValueError as e:
        raise GoogleNpzError(f"{path}: {e}") from e
    if not allow_nonfinite:
        check_finite(arrays, path, GoogleNpzError, NONFINITE_FIX)
    return arrays


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
                    raise ValueError(f"key {k!r} and {k[len(prefix):]!r} both present; keep one")
                out[k[len(prefix):]] = v
        return out
    return arrays


def google_config(arrays: dict, **overrides) -> ViTConfig:
    """Infer the ViTConfig from the shapes of Google-named arrays. overrides may set only
    fields the file cannot record: gelu, pool, dropout, attn_dropout, drop_path, eps, dtype."""
    _check_overrides(overrides)
    need = ["embedding/kernel", POS, "head/kernel",
            f"Transformer/encoderblock_0/{ATTN}query/kernel",
            "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise ValueError(f"not a vit_jax ViT checkpoint: missing {missing}, needed to infer the "
                         f"architecture (keys present: {sorted(arrays)[:8]}...)")
    shp = {k: arrays[k].shape for k in need}
    kern, pos, head, q, fc1 = (shp[k] for k in need)
    bad = [(k, s) for k, s, nd in zip(need, (kern, pos, head, q, fc1), (4, 3, 2, 3, 2))
           if len(s) != nd]
    if bad or kern[0] != kern[1] or pos[0] != 1:
        raise ValueError(f"cannot infer the architecture from these shapes: {bad or shp}; "
                         f"expected embedding/kernel (p, p, C, D), pos_embedding (1, N, D), "
                         f"query/kernel (D, H, Dh), Dense_0/kernel (D, F), head/kernel (R|D, K)")
    p, C, D = kern[0], kern[2], kern[3]
    _check_grid(arrays, pos[1])
    grid = math.isqrt(pos[1] - 1)
    blocks = {int(m.group(1)) for k in arrays
              if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))}
    F = fc1[1]
    ratio = F / D if int(D * (F / D)) == F else (F + 0.5) / D        # int(D * ratio) == F
    R = arrays["pre_logits/kernel"].shape[-1] if "pre_logits/kernel" in arrays else None
    fields = dict(image_size=grid * p, patch_size=p, in_channels=C, num_classes=head[-1], dim=D,
                  depth=max(blocks) + 1, heads=q[1], mlp_ratio=ratio, pos_embed="learned",
                  representation_size=R, gelu="tanh", eps=1e-6, pool="cls")
    fields.update(overrides)
    try:
        return ViTConfig(**fields)
    except ValueError as e:
        raise ValueError(f"the checkpoint's shapes and overrides give no valid ViTConfig: "
                         f"{e}") from e


def _check_overrides(overrides: dict) -> None:
    known = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown ViTConfig fields {unknown}; overridable: {OVERRIDABLE}")
    if overrides.get("pos_embed") == "sincos":
        raise ValueError("pos_embed='sincos' is unsupported for Google checkpoints: they carry a "
                         "learned position table; load with the learned table (the default)")
    fixed = sorted(set(overrides) - set(OVERRIDABLE))
    if fixed:
        raise ValueError(f"{fixed} are fixed by the checkpoint's shapes and cannot be overridden; "
                         f"use image_size= to change the resolution (the position table is "
                         f"resampled) and model.reset_head() to change the classes")


def _check_grid(arrays: dict, N: int) -> None:
    """The pos table must be 1 CLS row + a square grid; 'gap' files have no CLS row."""
    g = math.isqrt(max(N - 1, 0))
    if g > 0 and g * g == N - 1 and "cls" in arrays:
        return
    if "cls" not in arrays and math.isqrt(N) ** 2 == N:
        raise ValueError(f"this checkpoint has no 'cls' token and a {math.isqrt(N)}^2-row position "
                         f"table: a classifier='gap' (global average pooling) model, which "
                         f"minivit does not support; use a classifier='token' checkpoint")
    if g == 0 or g * g != N - 1:
        raise ValueError(f"pos_embedding has N={N} rows, not 1 (CLS) + grid^2 for a square grid; "
                         f"only square token grids with a CLS row are supported")


def check_google_arrays(arrays: dict, cfg: ViTConfig) -> None:
    """Raise one ValueError listing every missing, unknown, misshapen or non-float array."""
    want = google_shapes(cfg)
    missing = [k for k in want if k not in arrays]
    unknown = sorted(k for k in arrays if k not in want)
    misshapen = [f"{k}: got {arrays[k].shape}, expected {want[k]}" for k in want
                 if k in arrays and arrays[k].shape != want[k]]
    nonfloat = [f"{k}: {arrays[k].dtype}" for k in want
                if k in arrays and arrays[k].dtype.kind != "f"]
    if not (missing or unknown or misshapen or nonfloat):
        return
    lines = [f"checkpoint does not match the vit_jax layout of a ViT with patch={cfg.patch_size}, "
             f"dim={cfg.dim}, depth={cfg.depth}, heads={cfg.heads}, mlp_dim={cfg.mlp_dim}, "
             f"classes={cfg.num_classes}, representation_size={cfg.representation_size}:"]
    for title, items in (("missing keys", missing), ("unknown keys", unknown),
                         ("misshapen keys", misshapen), ("non-float arrays", nonfloat)):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
    if any(k.startswith(("conv_root/", "block1/")) for k in arrays):
        lines.append("  (ResNet keys found: hybrid R50+ViT checkpoints are not supported)")
    lines.append("  re-export the file from a plain ViT, or fix the listed keys")
    raise ValueError("\n".join(lines))


# ---- public entry points ------------------------------------------------------------------------
def load_google_npz(path, image_size: int | None = None, *, resize_method: str = "bilinear",
                    align_corners: bool = True, seed: int = 0, allow_nonfinite: bool = False,
                    **overrides) -> ViT:
    """A ViT with the weights of a vit_jax .npz. The architecture comes from the shapes;
    overrides set gelu/pool/dropout/attn_dropout/drop_path/eps/dtype. image_size, when it
    differs from the file's, resamples the position grid (ViT.set_image_size). A bad file
    raises GoogleNpzError naming it; NaN or inf weights too, unless allow_nonfinite."""
    _check_overrides(overrides)                           # the caller's mistake, not the file's
    path = os.fspath(path)
    arrays = read_google_npz(path, allow_nonfinite)
    try:
        cfg = google_config(arrays, **overrides)
        check_google_arrays(arrays, cfg)
    except ValueError as e:
        raise GoogleNpzError(f"{path}: {e}") from e
    model = ViT(cfg, seed=seed, preprocessing=google_preprocessing(cfg))
    for k, v in from_google(arrays, cfg).items():
        model.params[k] = v                               # copied into the flat buffer
    if image_size is not None and image_size != cfg.image_size:
        model.set_image_size(image_size, resize_method, align_corners)
    return model


def google_preprocessing(cfg: ViTConfig) -> Preprocessing:
    """vit_jax feeds pixels scaled to [-1, 1]: mean = std = 0.5 of pixel / 255 per channel.
    The files carry no class names."""
    C = cfg.in_channels
    return Preprocessing(mean=[0.5] * C, std=[0.5] * C, image_size=cfg.image_size, channels=C)


def save_google_npz(model: ViT, path) -> None:
    """Write the model's weights as a vit_jax .npz (atomically: temp file + os.replace; an
    OSError becomes files.WriteError naming the path, and the old file stays).
    Only weights are stored: reload with the same gelu/pool/eps overrides if not the defaults."""
    cfg = model.config
    if cfg.pos_embed != "learned":
        raise ValueError("save_google_npz needs pos_embed='learned': the Google layout stores a "
                         "learned position table, and minivit's fixed 'sincos' table has none")
    host = {k: backend.to_numpy(v) for k, v in model.params.items()}
    arrays = to_google(host, cfg)
    atomic_write(os.fspath(path), lambda f: np.savez(f, **arrays))
