"""An independent PyTorch ViT for parity tests, written from the math with torch.nn.functional ops.

It reads a ViTConfig-like object (attributes image_size, patch_size, in_channels, num_classes, dim,
depth, heads, mlp_ratio, pool, gelu, pos_embed, representation_size, eps, mlp_dim) and loads
minivit's flat `params` dict (y = x @ w + b orientation) into torch's own layouts:
Conv2d weight (D, C, p, p) for the patch embedding, nn.Linear weights (out, in).
Only inference math is modelled: dropout, attention dropout and drop path are identities.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_pos_embed(grid: int, dim: int, dtype: torch.dtype) -> Tensor:
    """Fixed 2-D table: patch at (r, c) gets [sin(r w), cos(r w), sin(c w), cos(c w)], w_k = 1e4^(-k/d4).
    The CLS row is zeros. Returns (1, N, D), N = grid^2 + 1."""
    if dim % 4:
        raise ValueError(f"sincos position embedding needs dim % 4 == 0, got dim={dim}")
    d4 = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(d4, dtype=torch.float64) / d4)      # (d4,)
    r, c = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                          torch.arange(grid, dtype=torch.float64), indexing="ij")
    ro = r.reshape(-1, 1) * omega                                             # (P, d4)
    co = c.reshape(-1, 1) * omega                                             # (P, d4)
    pe = torch.cat([ro.sin(), ro.cos(), co.sin(), co.cos()], dim=1)          # (P, D)
    pe = torch.cat([torch.zeros(1, dim, dtype=torch.float64), pe], dim=0)     # (N, D)
    return pe[None].to(dtype)                                                 # (1, N, D)


class Block(nn.Module):
    """Pre-norm encoder block: x = x + Attn(LN1(x)); x = x + MLP(LN2(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, gelu: str, eps: float, dtype: torch.dtype):
        super().__init__()
        kw = dict(dtype=dtype)
        self.heads, self.eps = heads, eps
        self.gelu = {"tanh": "tanh", "erf": "none"}[gelu]
        self.norm1 = nn.LayerNorm(dim, eps=eps, **kw)
        self.qkv = nn.Linear(dim, 3 * dim, **kw)
        self.proj = nn.Linear(dim, dim, **kw)
        self.norm2 = nn.LayerNorm(dim, eps=eps, **kw)
        self.fc1 = nn.Linear(dim, mlp_dim, **kw)
        self.fc2 = nn.Linear(mlp_dim, dim, **kw)

    def attention(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """softmax(q k^T / sqrt(Dh)) v with heads split inside each of q, k, v; returns (out, probs)."""
        B, N, D = h.shape
        H = self.heads
        Dh = D // H
        qkv = F.linear(h, self.qkv.weight, self.qkv.bias)                     # (B, N, 3D)
        q, k, v = qkv.split(D, dim=-1)                                        # 3 x (B, N, D)
        q, k, v = (t.reshape(B, N, H, Dh).transpose(1, 2) for t in (q, k, v))  # (B, H, N, Dh)
        a = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(Dh), dim=-1)        # (B, H, N, N)
        o = (a @ v).transpose(1, 2).reshape(B, N, D)                          # (B, N, D)
        return F.linear(o, self.proj.weight, self.proj.bias), a               # (B, N, D)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        D = x.shape[-1]
        h = F.layer_norm(x, (D,), self.norm1.weight, self.norm1.bias, self.eps)  # (B, N, D)
        out, a = self.attention(h)
        x = x + out                                                           # (B, N, D)
        h = F.layer_norm(x, (D,), self.norm2.weight, self.norm2.bias, self.eps)  # (B, N, D)
        h = F.gelu(F.linear(h, self.fc1.weight, self.fc1.bias), approximate=self.gelu)  # (B, N, F)
        x = x + F.linear(h, self.fc2.weight, self.fc2.bias)                   # (B, N, D)
        return x, a


class TorchViT(nn.Module):
    """Reference ViT: conv patch embed, CLS + positions, pre-norm blocks, LN, pool, [pre-logits], head."""

    def __init__(self, config, dtype: torch.dtype = torch.float64):
        super().__init__()
        c = config
        S, p, C, D = c.image_size, c.patch_size, c.in_channels, c.dim
        if S % p:
            raise ValueError(f"image_size={S} not divisible by patch_size={p}; pick a patch that divides it")
        if D % c.heads:
            raise ValueError(f"dim={D} not divisible by heads={c.heads}; pick heads dividing dim")
        self.config, self.grid = c, S // p
        N = self.grid ** 2 + 1
        kw = dict(dtype=dtype)
        self.patch_embed = nn.Conv2d(C, D, kernel_size=p, stride=p, **kw)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D, **kw))
        if c.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, N, D, **kw))
        else:
            self.register_buffer("pos_embed", sincos_pos_embed(self.grid, D, dtype))
        self.blocks = nn.ModuleList(Block(D, c.heads, c.mlp_dim, c.gelu, c.eps, dtype)
                                    for _ in range(c.depth))
        self.norm = nn.LayerNorm(D, eps=c.eps, **kw)
        R = c.representation_size
        self.pre_logits = nn.Linear(D, R, **kw) if R else None
        self.head = nn.Linear(R or D, c.num_classes, **kw)

    def forward(self, x: Tensor, return_attention: bool = False):
        """x (B, C, S, S) -> logits (B, K); with return_attention also [probs (B, H, N, N)] per block."""
        c = self.config
        t = F.conv2d(x, self.patch_embed.weight, self.patch_embed.bias, stride=c.patch_size)  # (B, D, G, G)
        t = t.flatten(2).transpose(1, 2)                                      # (B, P, D) row-major grid
        cls = self.cls_token.expand(t.shape[0], -1, -1)                       # (B, 1, D)
        t = torch.cat([cls, t], dim=1) + self.pos_embed                      # (B, N, D)
        attns = []
        for blk in self.blocks:
            t, a = blk(t)                                                     # (B, N, D)
            attns.append(a)
        t = F.layer_norm(t, (c.dim,), self.norm.weight, self.norm.bias, c.eps)  # (B, N, D)
        h = t[:, 0] if c.pool == "cls" else t[:, 1:].mean(dim=1)              # (B, D)
        if self.pre_logits is not None:
            h = torch.tanh(F.linear(h, self.pre_logits.weight, self.pre_logits.bias))  # (B, R)
        logits = F.linear(h, self.head.weight, self.head.bias)               # (B, K)
        return (logits, attns) if return_attention else logits

    # ---- name / layout mapping to minivit -------------------------------------------------------

    def _mapping(self) -> dict[str, tuple[Tensor, str]]:
        """minivit name -> (torch parameter, layout) with layout 'same', 'linear' (w.T) or 'conv'."""
        m: dict[str, tuple[Tensor, str]] = {
            "patch_embed.w": (self.patch_embed.weight, "conv"),
            "patch_embed.b": (self.patch_embed.bias, "same"),
            "cls_token": (self.cls_token, "same"),
        }
        if isinstance(self.pos_embed, nn.Parameter):
            m["pos_embed"] = (self.pos_embed, "same")
        for i, blk in enumerate(self.blocks):
            for mini, mod, kind in (("norm1", blk.norm1, "same"), ("attn.qkv", blk.qkv, "linear"),
                                    ("attn.proj", blk.proj, "linear"), ("norm2", blk.norm2, "same"),
                                    ("mlp.fc1", blk.fc1, "linear"), ("mlp.fc2", blk.fc2, "linear")):
                m[f"blocks.{i}.{mini}.w"] = (mod.weight, kind)
                m[f"blocks.{i}.{mini}.b"] = (mod.bias, "same")
        m["norm.w"], m["norm.b"] = (self.norm.weight, "same"), (self.norm.bias, "same")
        if self.pre_logits is not None:
            m["pre_logits.w"] = (self.pre_logits.weight, "linear")
            m["pre_logits.b"] = (self.pre_logits.bias, "same")
        m["head.w"], m["head.b"] = (self.head.weight, "linear"), (self.head.bias, "same")
        return m

    def _to_torch(self, a: np.ndarray, kind: str) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if kind == "linear":
            return t.T                                                        # (in, out) -> (out, in)
        if kind == "conv":
            p, C = self.config.patch_size, self.config.in_channels
            return t.reshape(p, p, C, -1).permute(3, 2, 0, 1)                 # (p*p*C, D) -> (D, C, p, p)
        return t

    def _to_minivit(self, t: Tensor, kind: str) -> np.ndarray:
        if kind == "linear":
            t = t.T                                                           # (out, in) -> (in, out)
        elif kind == "conv":
            t = t.permute(2, 3, 1, 0).reshape(-1, t.shape[0])                 # (D, C, p, p) -> (p*p*C, D)
        return t.detach().cpu().numpy().copy()

    def load_minivit_params(self, params: dict[str, np.ndarray]) -> None:
        """Copy minivit's flat params (host arrays) into this model; names must match exactly."""
        m = self._mapping()
        if set(params) != set(m):
            raise KeyError(f"param names differ: missing {sorted(set(m) - set(params))}, "
                           f"unexpected {sorted(set(params) - set(m))}")
        with torch.no_grad():
            for name, (p, kind) in m.items():
                t = self._to_torch(np.asarray(params[name]), kind)
                if t.shape != p.shape:
                    raise ValueError(f"{name}: shape {tuple(params[name].shape)} maps to {tuple(t.shape)}, "
                                     f"expected torch shape {tuple(p.shape)}")
                p.copy_(t)

    def grads_as_minivit(self) -> dict[str, np.ndarray]:
        """Every parameter's .grad in minivit's names and orientation."""
        out = {}
        for name, (p, kind) in self._mapping().items():
            if p.grad is None:
                raise RuntimeError(f"{name} has no gradient; call backward() on a loss first")
            out[name] = self._to_minivit(p.grad, kind)
        return out
