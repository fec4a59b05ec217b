"""ViTConfig: every hyperparameter that fixes the model's shapes and behaviour."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

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
