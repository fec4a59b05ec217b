"""ViTConfig, every hyperparameter that fixes the model's shapes and behaviour, with the one table
of parameter names and shapes (ViTConfig.param_shapes); the named models (MODELS, built from the
named widths SIZES; model_config(name) gives one); Preprocessing, how raw images become the
model's input, carried by the model and its checkpoints.

    cfg = model_config("vit-b16")                        # ViT-B/16 at 224, 1000 classes
    cfg = model_config("deit-s16", num_classes=37, image_size=384)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from .errors import UserError

BLOCK_KEYS = ("norm1.w", "norm1.b", "attn.qkv.w", "attn.qkv.b", "attn.proj.w", "attn.proj.b",
              "norm2.w", "norm2.b", "mlp.fc1.w", "mlp.fc1.b", "mlp.fc2.w", "mlp.fc2.b")
SCALE_KEYS = ("ls1.g", "ls2.g")         # LayerScale of the two branches, with cfg.layer_scale
HEAD_KEYS = ("norm.w", "norm.b", "pre_logits.w", "pre_logits.b", "head.w", "head.b",
             "head_dist.w", "head_dist.b")
_CHOICES = {"pool": ("cls", "mean"), "gelu": ("tanh", "erf"),
            "pos_embed": ("learned", "sincos"), "dtype": ("float32", "float64")}


@dataclass
class ViTConfig:
    """Shapes: images (B, C, S, S) -> P = (S/p)^2 patches -> N = T + P tokens of width D, the
    T prefix tokens first: [cls] [dist] [registers] patches (T = 1 by default: the CLS token).
    The fields after dtype describe released checkpoint families (io/hf.py, io/timm.py); their
    defaults give the original ViT."""
    image_size: int = 28            # S: images are S x S
    patch_size: int = 7             # p: patches are p x p
    in_channels: int = 1            # C
    num_classes: int = 10           # K; 0: no head, forward returns the pooled features
    dim: int = 64                   # D
    depth: int = 6                  # number of encoder blocks
    heads: int = 4                  # H, with Dh = D / H
    mlp_ratio: float = 2.0          # F = int(D * mlp_ratio)
    pool: str = "cls"               # 'cls' token or 'mean' over patch tokens
    gelu: str = "tanh"              # 'tanh' approximation or exact 'erf'
    pos_embed: str = "learned"      # 'learned' 1-D table or fixed 2-D 'sincos'
    dropout: float = 0.0            # on embeddings, attention output and MLP hidden/output
    attn_dropout: float = 0.0       # on attention probabilities
    drop_path: float = 0.0          # stochastic depth rate of the last block (linear in depth)
    representation_size: Optional[int] = None  # optional pre-logits Dense + tanh (Google ckpts)
    eps: float = 1e-6               # LayerNorm epsilon
    dtype: str = "float32"          # parameter and activation dtype
    layer_scale: Optional[float] = None  # LayerScale: each branch times a learned (D,) vector
                                    # initialized to this value (DeiT III, DINOv2); None: off
    num_registers: int = 0          # R register tokens after the class tokens (DINOv2-reg); they
                                    # carry no position and are left out of the mean pool
    distilled: bool = False         # DeiT distillation token after CLS and a second head;
                                    # logits = mean of the two heads
    class_token: bool = True        # False: no CLS token (then pool='mean')
    pos_embed_cls: bool = True      # the position table has rows for the class tokens (CLS,
                                    # dist); False: patches only (timm no_embed_class)
    fc_norm: bool = False           # the final LayerNorm after pooling (timm fc_norm: average
                                    # the tokens, then normalize), not before it

    def __post_init__(self):
        for field, allowed in _CHOICES.items():
            if getattr(self, field) not in allowed:
                raise UserError(f"{field}={getattr(self, field)!r} is not one of {allowed}")
        for field in ("image_size", "patch_size", "in_channels", "num_classes", "dim",
                      "depth", "heads", "num_registers"):
            v = getattr(self, field)
            low = 0 if field in ("num_classes", "num_registers") else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                kind = "a non-negative" if low == 0 else "a positive"
                raise UserError(f"{field} must be {kind} integer, got {v!r}")
        for field in ("distilled", "class_token", "pos_embed_cls", "fc_norm"):
            if not isinstance(getattr(self, field), bool):
                raise UserError(f"{field} must be True or False, got {getattr(self, field)!r}")
        if self.dim % self.heads:
            raise UserError(f"dim={self.dim} is not divisible by heads={self.heads}; choose heads "
                            f"that divide dim (e.g. heads={_divisor(self.dim, self.heads)})")
        if self.image_size % self.patch_size:
            raise UserError(f"image_size={self.image_size} is not divisible by "
                            f"patch_size={self.patch_size}; choose a patch that divides the "
                            f"image size or resize/pad the images")
        if (not isinstance(self.mlp_ratio, (int, float)) or isinstance(self.mlp_ratio, bool)
                or not math.isfinite(self.mlp_ratio) or self.mlp_ratio <= 0
                or int(self.dim * self.mlp_ratio) < 1):
            raise UserError(f"mlp_ratio={self.mlp_ratio!r} must be a finite number giving a "
                            f"non-empty MLP; use e.g. 2.0 or 4.0")
        for field in ("dropout", "attn_dropout", "drop_path"):
            v = getattr(self, field)
            if not 0.0 <= v < 1.0:
                raise UserError(f"{field}={v} must be in [0, 1)")
        if self.representation_size is not None and self.representation_size <= 0:
            raise UserError(f"representation_size must be positive or None, "
                            f"got {self.representation_size}")
        self._check_families()

    def _check_families(self) -> None:
        """The combinations of the checkpoint-family fields that the model defines."""
        if self.layer_scale is not None and not (isinstance(self.layer_scale, (int, float))
                                                 and self.layer_scale > 0):
            raise UserError(f"layer_scale must be a positive initial value (e.g. 1e-5) or "
                            f"None, got {self.layer_scale!r}")
        if not self.class_token and (self.pool == "cls" or self.distilled):
            raise UserError("class_token=False leaves no CLS token to pool or distill from; "
                            "use pool='mean' (and distilled=False)")
        if self.distilled and (self.pool != "cls" or self.representation_size):
            raise UserError("distilled=True reads the CLS and distillation tokens with a head "
                            "each: it needs pool='cls' and no representation_size")
        if self.fc_norm and self.pool != "mean":
            raise UserError("fc_norm=True normalizes the average of the patch tokens: it needs "
                            "pool='mean' (with pool='cls' the final norm is the same either way)")
        if self.eps <= 0:
            raise UserError(f"eps must be positive, got {self.eps}")

    @property
    def grid(self) -> int:          # patches per side, S / p
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:   # P
        return self.grid ** 2

    @property
    def num_class_tokens(self) -> int:   # CLS and distillation tokens: 0, 1 or 2
        return int(self.class_token) + int(self.distilled)

    @property
    def num_prefix_tokens(self) -> int:  # T: class tokens, then registers, before the patches
        return self.num_class_tokens + self.num_registers

    @property
    def num_tokens(self) -> int:    # N = T + P (N = P + 1 by default: CLS first)
        return self.num_patches + self.num_prefix_tokens

    @property
    def num_pos_prefix(self) -> int:    # rows of the position table before the patch rows
        return self.num_class_tokens if self.pos_embed_cls else 0

    @property
    def num_features(self) -> int:  # width of the pooled representation the head reads
        return self.representation_size or self.dim

    @property
    def num_outputs(self) -> int:   # forward's output width: K, or the features when K = 0
        return self.num_classes or self.num_features

    @property
    def head_dim(self) -> int:      # Dh
        return self.dim // self.heads

    @property
    def mlp_dim(self) -> int:       # F
        return int(self.dim * self.mlp_ratio)

    def param_shapes(self) -> dict[str, tuple]:
        """Every parameter's name and shape, in the model's order: the one table that init,
        the weight formats (io/) and the benchmarks read. Weights are (in, out): y = x @ w + b."""
        D, F, p, C, K = self.dim, self.mlp_dim, self.patch_size, self.in_channels, self.num_classes
        s = {"patch_embed.w": (p * p * C, D), "patch_embed.b": (D,)}
        if self.class_token:
            s["cls_token"] = (1, 1, D)
        if self.distilled:
            s["dist_token"] = (1, 1, D)
        if self.num_registers:
            s["reg_tokens"] = (1, self.num_registers, D)
        if self.pos_embed == "learned":
            s["pos_embed"] = (1, self.num_pos_prefix + self.num_patches, D)
        block = {"norm1.w": (D,), "norm1.b": (D,), "attn.qkv.w": (D, 3 * D), "attn.qkv.b": (3 * D,),
                 "attn.proj.w": (D, D), "attn.proj.b": (D,), "norm2.w": (D,), "norm2.b": (D,),
                 "mlp.fc1.w": (D, F), "mlp.fc1.b": (F,), "mlp.fc2.w": (F, D), "mlp.fc2.b": (D,),
                 "ls1.g": (D,), "ls2.g": (D,)}
        for i in range(self.depth):
            s.update((f"blocks.{i}.{k}", block[k]) for k in self.block_keys())
        s.update({"norm.w": (D,), "norm.b": (D,)})
        R = self.representation_size
        if R:
            s.update({"pre_logits.w": (D, R), "pre_logits.b": (R,)})
        if K:
            s.update({"head.w": (R or D, K), "head.b": (K,)})
            if self.distilled:
                s.update({"head_dist.w": (D, K), "head_dist.b": (K,)})
        return s

    def block_keys(self) -> tuple:
        """The short names of one block's parameters, in order (LayerScale's after its branch)."""
        if self.layer_scale is None:
            return BLOCK_KEYS
        return BLOCK_KEYS[:6] + ("ls1.g",) + BLOCK_KEYS[6:] + ("ls2.g",)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        """Build from a dict (e.g. a checkpoint's JSON); unknown keys are an error."""
        return _from_known_fields(cls, d, "; this checkpoint was written by an incompatible "
                                          "minivit version")


def _from_known_fields(cls, d: dict, fix: str):
    """cls(**d) for a dataclass, naming any field of d that cls does not have."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"unknown {cls.__name__} fields {unknown}{fix}")
    return cls(**d)


def _divisor(dim: int, heads: int) -> int:
    """The divisor of dim nearest to heads (for the error message; the smaller one on a tie),
    searched outward from min(heads, dim): a bounded number of steps, however large the two
    are (1 when none is near)."""
    start = min(heads, dim)
    for k in range(min(start, 4096)):
        for h in (start - k, start + k):
            if 1 <= h <= dim and dim % h == 0:
                return h
    return 1


# ---- named models -------------------------------------------------------------------------------
# The encoder widths the ViT papers name (Dosovitskiy et al. 2021: Ti, S, B, L, H; Zhai et al.
# 2022, "Scaling Vision Transformers": g, G; timm's medium): width D, depth, heads H, F / D.
SIZES = {
    "tiny": dict(dim=192, depth=12, heads=3, mlp_ratio=4.0),
    "small": dict(dim=384, depth=12, heads=6, mlp_ratio=4.0),
    "medium": dict(dim=512, depth=12, heads=8, mlp_ratio=4.0),
    "base": dict(dim=768, depth=12, heads=12, mlp_ratio=4.0),
    "large": dict(dim=1024, depth=24, heads=16, mlp_ratio=4.0),
    "huge": dict(dim=1280, depth=32, heads=16, mlp_ratio=4.0),
    "giant": dict(dim=1408, depth=40, heads=16, mlp_ratio=48 / 11),        # F = 6144
    "gigantic": dict(dim=1664, depth=48, heads=16, mlp_ratio=64 / 13),     # F = 8192
}
_IMAGENET = dict(image_size=224, in_channels=3, num_classes=1000)
_MNIST = dict(image_size=28, in_channels=1, num_classes=10)
_DEIT = dict(gelu="erf")                       # timm's and transformers' exact GELU
_DINOV2 = dict(image_size=224, in_channels=3, num_classes=0, patch_size=14, gelu="erf",
               layer_scale=1e-5)              # a backbone (no head), run at 224 (table: 518)

# Named models: every field ViTConfig needs that is not its default. Google's ViT keeps
# ViTConfig's defaults (Flax's tanh GELU, eps 1e-6, CLS pooling).
MODELS = {
    "vit-ti16": dict(**_IMAGENET, patch_size=16, **SIZES["tiny"]),
    "vit-s16": dict(**_IMAGENET, patch_size=16, **SIZES["small"]),
    "vit-b16": dict(**_IMAGENET, patch_size=16, **SIZES["base"]),
    "vit-l16": dict(**_IMAGENET, patch_size=16, **SIZES["large"]),
    "deit-ti16": dict(**_IMAGENET, patch_size=16, **SIZES["tiny"], **_DEIT),
    "deit-s16": dict(**_IMAGENET, patch_size=16, **SIZES["small"], **_DEIT),
    "deit-b16": dict(**_IMAGENET, patch_size=16, **SIZES["base"], **_DEIT),
    "dinov2-s14": dict(**_DINOV2, **SIZES["small"]),
    "dinov2-b14": dict(**_DINOV2, **SIZES["base"]),
    # MNIST (training/recipes.py): the default recipe's model, a small one, a wide one
    "mnist": dict(**_MNIST, patch_size=7, dim=64, depth=6, heads=4, mlp_ratio=2.0),
    "mnist-tiny": dict(**_MNIST, patch_size=7, dim=32, depth=2, heads=2, mlp_ratio=2.0),
    "mnist-p4": dict(**_MNIST, patch_size=4, dim=128, depth=6, heads=4, mlp_ratio=2.0),
    # the smoke-test model (16 x 16 x 1): the benchmarks' --smoke
    "tiny": dict(image_size=16, patch_size=4, in_channels=1, num_classes=10, dim=32, depth=2,
                 heads=2, mlp_ratio=2.0),
}


def model_config(name: str, **overrides) -> ViTConfig:
    """The validated ViTConfig of a named model (MODELS), with overrides of any of its fields
    (num_classes=, image_size=, dtype=, drop_path=, ...)."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; the named models are "
                        f"{', '.join(sorted(MODELS))}")
    return _from_known_fields(ViTConfig, {**MODELS[name], **overrides},
                              f" for model {name!r}; overrides must be ViTConfig fields")


RESIZE_MODES = ("square", "shortest")
RESAMPLE = ("nearest", "bilinear", "bicubic")


@dataclass
class Preprocessing:
    """How raw images become the model's input: uint8 pixels, resized to image_size x image_size
    with `channels` channels, then x = (pixel / 255 - mean) / std per channel; class_names[k]
    names output k. Saved in checkpoints and carried by the model (`model.preprocessing`), so
    prediction uses what training used. There are no defaults: each dataset states its own.
    Released checkpoints state a resize first (io/preprocess.py applies it): with resize_size,
    the image is resized with `resample` to resize_size x resize_size ('square') or so that its
    shorter side is resize_size ('shortest'), then center-cropped to image_size if center_crop."""
    mean: Sequence[float]
    std: Sequence[float]
    image_size: Optional[int] = None
    channels: Optional[int] = None
    class_names: Optional[list] = None
    resize_size: Optional[int] = None   # None: images come at image_size (or --resize)
    resize_mode: str = "square"         # 'square' or 'shortest' (aspect ratio kept)
    center_crop: bool = False           # crop the center image_size x image_size after resizing
    resample: str = "bilinear"          # the resize filter: nearest, bilinear or bicubic (PIL's)

    def __post_init__(self):
        self.mean = [float(v) for v in _as_list(self.mean, "mean")]
        self.std = [float(v) for v in _as_list(self.std, "std")]
        if len(self.mean) != len(self.std):
            raise UserError(f"mean has {len(self.mean)} values and std {len(self.std)}; give "
                            f"one value each or one per channel")
        if any(not s > 0 for s in self.std):
            raise UserError(f"std must be positive, got {self.std}")
        if self.channels is not None and len(self.mean) not in (1, self.channels):
            raise UserError(f"{len(self.mean)} mean/std values for {self.channels} channels; "
                            f"give one value or one per channel")
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
        if self.resize_mode not in RESIZE_MODES or self.resample not in RESAMPLE:
            raise UserError(f"resize_mode={self.resize_mode!r}, resample={self.resample!r}: "
                            f"expected one of {RESIZE_MODES} and one of {RESAMPLE}")
        for field in ("resize_size", "image_size"):
            v = getattr(self, field)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise UserError(f"{field} must be a positive integer or None, got {v!r}")
        if self.channels is not None and (not isinstance(self.channels, int)
                                          or isinstance(self.channels, bool)
                                          or self.channels < 1):
            raise UserError(f"channels must be a positive integer or None, got "
                            f"{self.channels!r}")
        if self.center_crop and self.image_size is None:
            raise UserError("center_crop=True crops to image_size: give image_size")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """Build from a dict (e.g. a checkpoint's JSON); unknown keys are an error."""
        return _from_known_fields(cls, d, "; this file was written by an incompatible minivit "
                                          "version")


def _as_list(v, name: str) -> list:
    if isinstance(v, (int, float)):
        return [v]
    try:
        out = list(v)
    except TypeError:
        raise UserError(f"{name} must be a number or a list of numbers, got {v!r}") from None
    if not out:
        raise UserError(f"{name} is empty; give one value or one per channel")
    return out
