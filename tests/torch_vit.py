"""The one PyTorch reference ViT, written from the math with torch.nn.functional ops; it does not
import minivit, so that it checks minivit rather than repeating it.

It serves two uses:
- parity (tests/test_vs_torch.py, tests/io/test_google.py): in float64, logits, loss, input and
  parameter gradients and every block's attention probabilities against minivit's, to 1e-10;
- timing (benchmarks/measure.py): float32 by default, dropout and attention dropout active in
  train mode when their rates are > 0, and with sdpa=True PyTorch's fused
  F.scaled_dot_product_attention instead of the written-out softmax(q k^T / sqrt(Dh)) v.

    model = TorchViT(cfg, dtype=torch.float64)
    model.load_minivit_params(params)                 # minivit's names, y = x @ w + b layout
    logits, attn = model(x, return_attention=True)    # (B, K), depth x (B, H, N, N)
    F.cross_entropy(logits, y).backward()
    grads = model.grads_as_minivit()                  # minivit's names and layout

The config is read by attribute (a minivit ViTConfig or any object with these fields):
image_size, patch_size, in_channels, num_classes, dim, depth, heads, mlp_dim, pool ('cls' or
'mean'), gelu ('tanh' or 'erf'), pos_embed ('learned' or 'sincos'), representation_size, eps,
dropout, attn_dropout, drop_path. The model: stride-p conv patch embedding (row-major grid), CLS
token first, position table added, pre-norm blocks with a fused qkv laid out [q | k | v] with
heads contiguous inside each, final LayerNorm, CLS or mean pooling, optional tanh pre-logits,
linear head. Drop path is not modelled: a config with drop_path > 0 is refused.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TorchViT", "sincos_pos_embed"]


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


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout in training mode when p > 0; the identity otherwise."""
    return F.dropout(x, p, training=True) if p and training else x


class Block(nn.Module):
    """Pre-norm encoder block: x = x + drop(Attn(LN1(x))); x = x + drop(fc2(drop(gelu(fc1(LN2(x))))))."""

    def __init__(self, cfg, dtype: torch.dtype, sdpa: bool = False):
        super().__init__()
        D, Fw = cfg.dim, cfg.mlp_dim
        kw = dict(dtype=dtype)
        self.heads, self.eps, self.sdpa = cfg.heads, cfg.eps, sdpa
        self.drop_rate, self.attn_drop_rate = cfg.dropout, cfg.attn_dropout
        self.gelu = {"tanh": "tanh", "erf": "none"}[cfg.gelu]
        self.norm1 = nn.LayerNorm(D, eps=cfg.eps, **kw)
        self.qkv = nn.Linear(D, 3 * D, **kw)
        self.proj = nn.Linear(D, D, **kw)
        self.norm2 = nn.LayerNorm(D, eps=cfg.eps, **kw)
        self.fc1 = nn.Linear(D, Fw, **kw)
        self.fc2 = nn.Linear(Fw, D, **kw)

    def attention(self, h: Tensor, return_probs: bool) -> tuple[Tensor, Tensor | None]:
        """softmax(q k^T / sqrt(Dh)) v per head, heads concatenated, then the output projection;
        returns (out (B, N, D), probs (B, H, N, N) before attention dropout, or None)."""
        B, N, D = h.shape
        H = self.heads
        Dh = D // H
        qkv = F.linear(h, self.qkv.weight, self.qkv.bias)                     # (B, N, 3D)
        q, k, v = qkv.reshape(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, Dh)
        p_drop = self.attn_drop_rate if self.training else 0.0
        a = None
        if self.sdpa:
            if return_probs:
                raise ValueError("return_attention needs the written-out attention: build "
                                 "TorchViT with sdpa=False (F.scaled_dot_product_attention "
                                 "does not return its probabilities)")
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop)    # (B, H, N, Dh)
        else:
            a = F.softmax((q / math.sqrt(Dh)) @ k.transpose(-2, -1), dim=-1)  # (B, H, N, N)
            o = dropout(a, p_drop, True) @ v                                  # (B, H, N, Dh)
        o = o.transpose(1, 2).reshape(B, N, D)                                # (B, N, D)
        return F.linear(o, self.proj.weight, self.proj.bias), a               # (B, N, D)

    def forward(self, x: Tensor, return_probs: bool = False) -> tuple[Tensor, Tensor | None]:
        D = x.shape[-1]
        h = F.layer_norm(x, (D,), self.norm1.weight, self.norm1.bias, self.eps)  # (B, N, D)
        out, a = self.attention(h, return_probs)
        x = x + dropout(out, self.drop_rate, self.training)                     # (B, N, D)
        h = F.layer_norm(x, (D,), self.norm2.weight, self.norm2.bias, self.eps)  # (B, N, D)
        h = F.gelu(F.linear(h, self.fc1.weight, self.fc1.bias), approximate=self.gelu)  # (B, N, F)
        h = F.linear(dropout(h, self.drop_rate, self.training), self.fc2.weight, self.fc2.bias)
        return x + dropout(h, self.drop_rate, self.training), a                 # (B, N, D)


class TorchViT(nn.Module):
    """Reference ViT: conv patch embed, CLS + positions, pre-norm blocks, LN, pool, [pre-logits], head."""

    def __init__(self, config, dtype: torch.dtype = torch.float32, sdpa: bool = False):
        super().__init__()
        c = config
        S, p, C, D = c.image_size, c.patch_size, c.in_channels, c.dim
        if S % p:
            raise ValueError(f"image_size={S} not divisible by patch_size={p}; pick a patch that divides it")
        if D % c.heads:
            raise ValueError(f"dim={D} not divisible by heads={c.heads}; pick heads dividing dim")
        if c.drop_path:
            raise ValueError(f"drop_path={c.drop_path}: the reference does not model stochastic "
                             f"depth; compare or time with drop_path=0")
        self.config, self.grid, self.sdpa = c, S // p, sdpa
        N = self.grid ** 2 + 1
        kw = dict(dtype=dtype)
        self.patch_embed = nn.Conv2d(C, D, kernel_size=p, stride=p, **kw)
        self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, D, **kw), std=0.02))
        if c.pos_embed == "learned":
            self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, N, D, **kw), std=0.02))
        else:
            self.register_buffer("pos_embed", sincos_pos_embed(self.grid, D, dtype))
        self.blocks = nn.ModuleList(Block(c, dtype, sdpa) for _ in range(c.depth))
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
        t = dropout(t, c.dropout, self.training)
        attns = []
        for blk in self.blocks:
            t, a = blk(t, return_attention)                                   # (B, N, D)
            attns.append(a)
        if c.pool == "cls":                                                   # LayerNorm is per token
            h = F.layer_norm(t[:, 0], (c.dim,), self.norm.weight, self.norm.bias, c.eps)  # (B, D)
        else:
            t = F.layer_norm(t, (c.dim,), self.norm.weight, self.norm.bias, c.eps)     # (B, N, D)
            h = t[:, 1:].mean(dim=1)                                          # (B, D)
        if self.pre_logits is not None:
            h = torch.tanh(F.linear(h, self.pre_logits.weight, self.pre_logits.bias))  # (B, R)
        logits = F.linear(h, self.head.weight, self.head.bias)               # (B, K)
        return (logits, attns) if return_attention else logits

    def num_params(self) -> int:
        """Trainable parameters (the fixed sin-cos table is a buffer, as in minivit)."""
        return sum(p.numel() for p in self.parameters())

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups as minivit trains: weight decay on the weight matrices (linear
        weights and the patch-embedding kernel) only, none on biases, LayerNorm parameters,
        the CLS token or the position table."""
        decay = [p for p, kind in self._mapping().values() if kind != "same"]
        ids = {id(p) for p in decay}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": rest, "weight_decay": 0.0}]

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

    def load_minivit_params(self, params: dict[str, np.ndarray]) -> "TorchViT":
        """Copy minivit's flat params (host arrays) into this model; names must match exactly.
        Values are cast to this model's dtype. Returns self."""
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
        return self

    def grads_as_minivit(self) -> dict[str, np.ndarray]:
        """Every parameter's .grad in minivit's names and orientation."""
        out = {}
        for name, (p, kind) in self._mapping().items():
            if p.grad is None:
                raise RuntimeError(f"{name} has no gradient; call backward() on a loss first")
            out[name] = self._to_minivit(p.grad, kind)
        return out
