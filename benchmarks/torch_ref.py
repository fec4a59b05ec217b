"""An eager PyTorch ViT of exactly minivit's shape, written with plain torch.nn, for timing.

    TorchViT(cfg)              cfg: a minivit ViTConfig (read by attribute only, so this file
                               does not import minivit)
    model.load_minivit(params) copy a minivit model's weights in (then the logits agree)

Same layout as minivit: pre-norm blocks, fused qkv laid out [q | k | v] with heads contiguous in
each, CLS token first, learned (or fixed 2-D sin-cos) position table, final LayerNorm, CLS or mean
pooling, optional tanh pre-logits layer, linear head. The patch embedding is the usual stride-p
convolution. Attention is written out (q k^T, softmax, @ v) like minivit's, or, with sdpa=True,
PyTorch's fused F.scaled_dot_product_attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TorchViT", "num_params", "sincos_2d"]


class Attention(nn.Module):
    """y = concat_h(softmax(q_h k_h^T / sqrt(Dh)) v_h) @ proj, [q|k|v] = x @ qkv."""

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0, sdpa: bool = False):
        super().__init__()
        self.heads, self.sdpa, self.attn_dropout = heads, sdpa, attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        Dh = D // self.heads
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, Dh).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
        q, k, v = qkv.unbind(0)                                     # (B, H, N, Dh)
        p = self.attn_dropout if self.training else 0.0
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, N, Dh)
        else:
            a = ((q * Dh ** -0.5) @ k.transpose(-2, -1)).softmax(-1)  # (B, H, N, N)
            o = F.dropout(a, p) @ v if p else a @ v                 # (B, H, N, Dh)
        return self.proj(o.transpose(1, 2).reshape(B, N, D))        # (B, N, D)


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p else nn.Identity()


class Block(nn.Module):
    """x = x + drop(attn(norm1(x))); x = x + mlp(norm2(x)), mlp = drop(fc2(drop(gelu(fc1))))."""

    def __init__(self, cfg, sdpa: bool = False):
        super().__init__()
        D, F_ = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(D, eps=cfg.eps)
        self.attn = Attention(D, cfg.heads, cfg.attn_dropout, sdpa)
        self.drop_attn = _dropout(cfg.dropout)
        self.norm2 = nn.LayerNorm(D, eps=cfg.eps)
        self.mlp = nn.Sequential(nn.Linear(D, F_), nn.GELU(approximate="tanh" if cfg.gelu == "tanh"
                                                            else "none"),
                                 _dropout(cfg.dropout), nn.Linear(F_, D), _dropout(cfg.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_attn(self.attn(self.norm1(x)))           # (B, N, D)
        return x + self.mlp(self.norm2(x))                          # (B, N, D)


def sincos_2d(grid: int, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """minivit's fixed (1, 1 + grid^2, dim) sin-cos table as a tensor (a timing reference needs
    the same values, not a second derivation: tests/torch_vit.py has the independent one)."""
    from minivit.layers import sincos_2d as table
    return torch.from_numpy(table(grid, dim, "float64")).to(dtype or torch.get_default_dtype())


class TorchViT(nn.Module):
    """images (B, C, S, S) -> conv patch embed -> [cls; tokens] + pos -> blocks -> norm -> pool -> head."""

    def __init__(self, cfg, sdpa: bool = False):
        super().__init__()
        if cfg.drop_path:
            raise ValueError(f"drop_path={cfg.drop_path} is not supported by the timing "
                             f"reference; benchmark with drop_path=0")
        D, p, grid = cfg.dim, cfg.patch_size, cfg.image_size // cfg.patch_size
        N = grid * grid + 1
        self.pool = cfg.pool
        self.patch_embed = nn.Conv2d(cfg.in_channels, D, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.randn(1, 1, D) * 0.02)
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, N, D) * 0.02)
        else:
            self.register_buffer("pos_embed", sincos_2d(grid, D))
        self.drop = _dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, sdpa) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=cfg.eps)
        R = cfg.representation_size or D
        self.pre_logits = (nn.Sequential(nn.Linear(D, R), nn.Tanh()) if cfg.representation_size
                           else nn.Identity())
        self.head = nn.Linear(R, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)          # (B, P, D), row-major grid
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)  # (B, N, D)
        t = self.drop(t + self.pos_embed)                           # (B, N, D)
        for blk in self.blocks:
            t = blk(t)                                              # (B, N, D)
        h = self.norm(t[:, 0]) if self.pool == "cls" else self.norm(t)[:, 1:].mean(1)   # (B, D)
        return self.head(self.pre_logits(h))                        # (B, K)

    @torch.no_grad()
    def load_minivit(self, params: dict) -> "TorchViT":
        """Copy minivit's params (name -> host array, y = x @ w + b) into this model.
        Linear weights are transposed; patch_embed.w (p*p*C, D), indexed (i*p + j)*C + c,
        becomes the conv kernel (D, C, p, p)."""
        def put(dst: torch.Tensor, a) -> None:
            src = torch.as_tensor(a)
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"shape mismatch: minivit {tuple(src.shape)} vs torch "
                                 f"{tuple(dst.shape)}; build TorchViT from the same config")
            dst.copy_(src.to(dst.dtype))

        C, p = self.patch_embed.in_channels, self.patch_embed.kernel_size[0]
        D = self.patch_embed.out_channels
        pw = torch.as_tensor(params["patch_embed.w"]).reshape(p, p, C, D).permute(3, 2, 0, 1)
        put(self.patch_embed.weight, pw)
        put(self.patch_embed.bias, params["patch_embed.b"])
        put(self.cls_token, params["cls_token"])
        if isinstance(self.pos_embed, nn.Parameter):
            put(self.pos_embed, params["pos_embed"])
        else:                                   # the fixed table, rebuilt at the model's precision
            put(self.pos_embed, sincos_2d(int(round((self.pos_embed.shape[1] - 1) ** 0.5)), D,
                                          torch.float64))
        lin = lambda m, k: (put(m.weight, params[k + ".w"].T), put(m.bias, params[k + ".b"]))
        for i, blk in enumerate(self.blocks):
            b = f"blocks.{i}."
            for m, k in ((blk.norm1, "norm1"), (blk.norm2, "norm2")):
                put(m.weight, params[b + k + ".w"]), put(m.bias, params[b + k + ".b"])
            lin(blk.attn.qkv, b + "attn.qkv"), lin(blk.attn.proj, b + "attn.proj")
            lin(blk.mlp[0], b + "mlp.fc1"), lin(blk.mlp[3], b + "mlp.fc2")
        put(self.norm.weight, params["norm.w"]), put(self.norm.bias, params["norm.b"])
        if isinstance(self.pre_logits, nn.Sequential):
            lin(self.pre_logits[0], "pre_logits")
        lin(self.head, "head")
        return self


def num_params(model: nn.Module) -> int:
    """Trainable parameters (the fixed sin-cos table is a buffer, as in minivit)."""
    return sum(p.numel() for p in model.parameters())

