"""ViTConfig, every hyperparameter that fixes the model's shapes and behaviour, with the one table
of parameter names and shapes (ViTConfig.param_shapes); Preprocessing, how raw images become the
model's input, carried by the model and its checkpoints."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

BLOCK_KEYS = ("norm1.w", "norm1.b", "attn.qkv.w", "attn.qkv.b", "attn.proj.w", "attn.proj.b",
              "norm2.w", "norm2.b", "mlp.fc1.w", "mlp.fc1.b", "mlp.fc2.w", "mlp.fc2.b")
HEAD_KEYS = ("norm.w", "norm.b", "pre_logits.w", "pre_logits.b", "head.w", "head.b")
_CHOICES = {"pool": ("cls", "mean"), "gelu": ("tanh", "erf"),
            "pos_embed": ("learned", "sincos"), "dtype": ("float32", "float64")}


@dataclass
class ViTConfig:
    """Shapes: images (B, C, S, S) -> P = (S/p)^2 patches -> N = P + 1 tokens of width D."""
    image_size: int = 28            # S: images are S x S
    patch_size: int = 7             # p: patches are p x p
    in_channels: int = 1            # C
    num_classes: int = 10           # K
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

    def __post_init__(self):
        for field, allowed in _CHOICES.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r} is not one of {allowed}")
        for field in ("image_size", "patch_size", "in_channels", "num_classes", "dim",
                      "depth", "heads"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{field} must be a positive integer, got {v!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}; "
                             f"choose heads that divide dim (e.g. heads={_divisor(self.dim, self.heads)})")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by "
                             f"patch_size={self.patch_size}; choose a patch that divides the "
                             f"image size or resize/pad the images")
        if self.mlp_ratio <= 0 or int(self.dim * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} gives an empty MLP; use e.g. 2.0 or 4.0")
        for field in ("dropout", "attn_dropout", "drop_path"):
            v = getattr(self, field)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{field}={v} must be in [0, 1)")
        if self.representation_size is not None and self.representation_size <= 0:
            raise ValueError(f"representation_size must be positive or None, "
                             f"got {self.representation_size}")

    @property
    def grid(self) -> int:          # patches per side, S / p
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:   # P
        return self.grid ** 2

    @property
    def num_tokens(self) -> int:    # N = P + 1 (CLS first)
        return self.num_patches + 1

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
        s = {"patch_embed.w": (p * p * C, D), "patch_embed.b": (D,), "cls_token": (1, 1, D)}
        if self.pos_embed == "learned":
            s["pos_embed"] = (1, self.num_tokens, D)
        block = {"norm1.w": (D,), "norm1.b": (D,), "attn.qkv.w": (D, 3 * D), "attn.qkv.b": (3 * D,),
                 "attn.proj.w": (D, D), "attn.proj.b": (D,), "norm2.w": (D,), "norm2.b": (D,),
                 "mlp.fc1.w": (D, F), "mlp.fc1.b": (F,), "mlp.fc2.w": (F, D), "mlp.fc2.b": (D,)}
        for i in range(self.depth):
            s.update((f"blocks.{i}.{k}", block[k]) for k in BLOCK_KEYS)
        s.update({"norm.w": (D,), "norm.b": (D,)})
        R = self.representation_size
        if R:
            s.update({"pre_logits.w": (D, R), "pre_logits.b": (R,)})
        s.update({"head.w": (R or D, K), "head.b": (K,)})
        return s

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        """Build from a dict (e.g. a checkpoint's JSON); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig fields {unknown}; this checkpoint was written "
                             f"by an incompatible minivit version")
        return cls(**d)


def _divisor(dim: int, heads: int) -> int:
    """The divisor of dim nearest to heads (for the error message)."""
    return min((h for h in range(1, dim + 1) if dim % h == 0), key=lambda h: abs(h - heads))


@dataclass
class Preprocessing:
    """How raw images become the model's input: uint8 pixels, resized to image_size x image_size
    with `channels` channels, then x = (pixel / 255 - mean) / std per channel; class_names[k]
    names output k. Saved in checkpoints and carried by the model (`model.preprocessing`), so
    prediction uses what training used. There are no defaults: each dataset states its own."""
    mean: Sequence[float]
    std: Sequence[float]
    image_size: Optional[int] = None
    channels: Optional[int] = None
    class_names: Optional[list] = None

    def __post_init__(self):
        self.mean = [float(v) for v in _as_list(self.mean, "mean")]
        self.std = [float(v) for v in _as_list(self.std, "std")]
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}; give "
                             f"one value each or one per channel")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.channels is not None and len(self.mean) not in (1, self.channels):
            raise ValueError(f"{len(self.mean)} mean/std values for {self.channels} channels; "
                             f"give one value or one per channel")
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown Preprocessing fields {unknown}")
        return cls(**d)


def _as_list(v, name: str) -> list:
    if isinstance(v, (int, float)):
        return [v]
    try:
        out = list(v)
    except TypeError:
        raise ValueError(f"{name} must be a number or a list of numbers, got {v!r}") from None
    if not out:
        raise ValueError(f"{name} is empty; give one value or one per channel")
    return out
