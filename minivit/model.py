"""The Vision Transformer: parameters, forward pass and hand-written backward pass.

    x (B, C, S, S) -> patchify + linear (B, P, D) -> [cls; tokens] + pos (B, N, D)
      -> depth x pre-norm encoder block -> LayerNorm -> pool (cls or mean) (B, D)
      -> [tanh pre-logits] -> head (B, K)
"""
from __future__ import annotations

import numpy as np

from . import backend
from .config import ViTConfig
from .layers import (cls_backward, cls_forward, dropout_backward, dropout_forward,
                     layernorm_backward, layernorm_forward, linear_backward, linear_forward,
                     patch_embed_backward, patch_embed_forward, pos_embed_backward,
                     pos_embed_forward, sincos_2d, tanh_backward, tanh_forward)
from .layers.block import block_attention, block_backward, block_forward

__all__ = ["ViT", "ViTConfig", "init_params", "trunc_normal"]

MIN_CHUNK = 16      # smallest batch chunk worth a worker thread (see ViT._chunks)
BLOCK_KEYS = ("norm1.w", "norm1.b", "attn.qkv.w", "attn.qkv.b", "attn.proj.w", "attn.proj.b",
              "norm2.w", "norm2.b", "mlp.fc1.w", "mlp.fc1.b", "mlp.fc2.w", "mlp.fc2.b")


def trunc_normal(rng: np.random.Generator, shape, std: float = 0.02) -> np.ndarray:
    """Normal(0, std^2) truncated to [-2 std, 2 std] by redrawing the outliers (host, float64)."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return z * std


def init_params(cfg: ViTConfig, seed: int = 0) -> dict:
    """Weights and embeddings ~ truncated normal(std 0.02), biases 0, LayerNorm scale 1 / shift 0.
    Drawn on the host with NumPy so a seed gives the same model on every backend."""
    rng = np.random.default_rng(seed)
    D, F, p, C, K = cfg.dim, cfg.mlp_dim, cfg.patch_size, cfg.in_channels, cfg.num_classes
    shapes = {"patch_embed.w": (p * p * C, D), "patch_embed.b": (D,), "cls_token": (1, 1, D)}
    if cfg.pos_embed == "learned":
        shapes["pos_embed"] = (1, cfg.num_tokens, D)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.w": (D,), b + "norm1.b": (D,),
                       b + "attn.qkv.w": (D, 3 * D), b + "attn.qkv.b": (3 * D,),
                       b + "attn.proj.w": (D, D), b + "attn.proj.b": (D,),
                       b + "norm2.w": (D,), b + "norm2.b": (D,),
                       b + "mlp.fc1.w": (D, F), b + "mlp.fc1.b": (F,),
                       b + "mlp.fc2.w": (F, D), b + "mlp.fc2.b": (D,)})
    shapes.update({"norm.w": (D,), "norm.b": (D,)})
    R = D
    if cfg.representation_size:
        R = cfg.representation_size
        shapes.update({"pre_logits.w": (D, R), "pre_logits.b": (R,)})
    shapes.update({"head.w": (R, K), "head.b": (K,)})

    params = {}
    for name, shape in shapes.items():
        if name.endswith(".b"):
            value = np.zeros(shape)
        elif "norm" in name:                              # LayerNorm scale
            value = np.ones(shape)
        else:                                             # weights, cls_token, pos_embed
            value = trunc_normal(rng, shape)
        params[name] = backend.asarray(value, dtype=cfg.dtype)
    return params


class ViT:
    """A Vision Transformer with explicit forward and backward passes.

    model = ViT(ViTConfig(...), seed=0)
    logits = model.forward(x, train=True)    # x (B, C, S, S) float -> (B, K)
    dx = model.backward(dlogits)             # fills model.grads (same keys as model.params)
    """

    def __init__(self, config: ViTConfig, seed: int = 0):
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        self.config = config
        if backend.xp() is np:
            backend.tune_host_allocator()                 # see its docstring: ~2x per step
        self.params = init_params(config, seed)
        xp = backend.xp_of(self.params["head.w"])
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}
        self.rng = backend.rng(seed + 1)                  # dropout and drop-path masks
        self.pos_table = None                             # fixed (1, N, D) table for 'sincos'
        if config.pos_embed == "sincos":
            self.pos_table = backend.asarray(sincos_2d(config.grid, config.dim, config.dtype))
        d = config.depth
        self.drop_path_rates = [config.drop_path * i / max(d - 1, 1) for i in range(d)]
        self._caches = None                               # set by a training forward only

    # ---- forward --------------------------------------------------------------------------
    def forward(self, x, train: bool = False, return_attention: bool = False,
                backbone_grads: bool = True):
        """Logits (B, K); with return_attention also each block's attention (B, H, N, N).
        train=True applies dropout/drop path and keeps what backward needs; False caches nothing.
        backbone_grads=False (with train=True) is for a frozen backbone, e.g. head-only
        fine-tuning: only the head's caches are kept, and backward then fills the gradients of
        head_keys() alone (the rest are zero) and returns None instead of dL/dx: a backward that
        costs next to nothing.
        On NumPy a large batch is split into chunks run by worker threads (backend.workers())."""
        x = self.check_input(x)
        xp = backend.xp_of(x)
        chunks = self._chunks(x.shape[0]) if xp is np else [slice(None)]
        rngs = [None] * len(chunks)
        if train:                                         # one generator per chunk, drawn from self.rng
            rngs = [self.rng] if len(chunks) == 1 else \
                [backend.rng(int(s)) for s in self.rng.integers(2 ** 63, size=len(chunks))]

        cls_only = self.config.pool == "cls" and not return_attention

        def run(i):
            feats, caches, attn = self.forward_features(x[chunks[i]], rngs[i], return_attention,
                                                        cls_only, train and backbone_grads)
            logits, head_caches = self.forward_head(feats, rngs[i])
            return logits, (chunks[i], caches, head_caches if train else None), attn

        out = backend.parallel_map(run, list(range(len(chunks))))
        self._caches = (x.shape[0], [o[1] for o in out]) if train else None
        logits = out[0][0] if len(out) == 1 else xp.concatenate([o[0] for o in out])
        if not return_attention:
            return logits
        attn = [xp.concatenate(layer) for layer in zip(*[o[2] for o in out])]   # depth x (B, H, N, N)
        return logits, attn

    def _chunks(self, B: int) -> list:
        """Batch slices for the worker threads: at most backend.workers(), each >= MIN_CHUNK."""
        n = max(1, min(backend.workers(), B // MIN_CHUNK))
        edges = [B * i // n for i in range(n + 1)]
        return [slice(edges[i], edges[i + 1]) for i in range(n)]

    def forward_features(self, x, rng=None, return_attention: bool = False, cls_only: bool = False,
                         keep_caches: bool = True):
        """Images (B, C, S, S) -> tokens after the last block (B, N, D), with the caches
        (None unless keep_caches: then each layer's intermediates are freed as soon as possible).
        cls_only: the last block computes only the CLS row (B, 1, D): all that CLS pooling reads."""
        cfg, p = self.config, self.params
        t, c_patch = patch_embed_forward(x, p["patch_embed.w"], p["patch_embed.b"], cfg.patch_size)
        t, _ = cls_forward(t, p["cls_token"])                                 # (B, N, D)
        t, _ = pos_embed_forward(t, p["pos_embed"] if self.pos_table is None else self.pos_table)
        t, m_emb = dropout_forward(t, cfg.dropout, rng)                       # (B, N, D)
        caches, attn = [c_patch, m_emb], []
        for i, bp in enumerate(self.block_params()):
            t, c = block_forward(t, bp, cfg.heads, cfg.gelu, cfg.eps, cfg.dropout, cfg.attn_dropout,
                                 self.drop_path_rates[i], rng, cls_only and i == cfg.depth - 1)
            if keep_caches:
                caches.append(c)
            if return_attention:
                attn.append(block_attention(c))
        return t, caches if keep_caches else None, attn

    def forward_head(self, t, rng=None):
        """Tokens (B, N, D) -> final LayerNorm -> pool -> [pre-logits] -> logits (B, K).
        LayerNorm acts per token, so with CLS pooling only the CLS row is normalized."""
        cfg, p = self.config, self.params
        pooled = t[:, 0] if cfg.pool == "cls" else t                          # (B, D) or (B, N, D)
        h, c_norm = layernorm_forward(pooled, p["norm.w"], p["norm.b"], cfg.eps)
        if cfg.pool == "mean":
            h = h[:, 1:].mean(1)                                              # (B, D)
        c_pre = None
        if cfg.representation_size:
            h, c_lin = linear_forward(h, p["pre_logits.w"], p["pre_logits.b"])   # (B, R)
            h, c_tanh = tanh_forward(h)
            c_pre = (c_lin, c_tanh)
        logits, c_head = linear_forward(h, p["head.w"], p["head.b"])          # (B, K)
        return logits, (t.shape, c_norm, c_pre, c_head)

    # ---- backward -------------------------------------------------------------------------
    def backward(self, dlogits):
        """Given dL/dlogits (B, K) from a training forward, fill self.grads and return dL/dx."""
        if self._caches is None:
            raise ValueError("backward() needs the caches of a forward(x, train=True); call it "
                             "first (an eval forward caches nothing, and each backward uses them up)")
        B, chunk_caches = self._caches
        K = self.config.num_classes
        if getattr(dlogits, "shape", None) != (B, K):
            raise ValueError(f"dlogits has shape {getattr(dlogits, 'shape', None)}, expected "
                             f"({B}, {K}) like the logits of the last forward")
        self._caches = None
        out = backend.parallel_map(lambda c: self.backward_chunk(dlogits[c[0]], c[1], c[2]),
                                   chunk_caches)
        for k in self.grads:                              # sum the chunks' parameter gradients
            if k not in out[0][1]:                        # a frozen backbone (backbone_grads=False)
                self.grads[k][...] = 0
                continue
            self.grads[k] = out[0][1][k]
            for o in out[1:]:
                self.grads[k] += o[1][k]
        if out[0][0] is None or len(out) == 1:
            return out[0][0]
        return backend.xp_of(dlogits).concatenate([o[0] for o in out])

    def backward_chunk(self, dlogits, caches, head_caches):
        """Backward of one forward_features + forward_head: returns dx and a dict of grads
        (None and the head's grads alone when the forward kept no backbone caches)."""
        g = {}
        dt = self.backward_head(dlogits, head_caches, g)                      # (B, N, D)
        if caches is None:
            return None, g
        for i in reversed(range(self.config.depth)):
            dt, gb = block_backward(dt, caches[2 + i])
            g.update((f"blocks.{i}.{k}", v) for k, v in gb.items())
        dt = dropout_backward(dt, caches[1])
        dt, dpos = pos_embed_backward(dt)
        if self.pos_table is None:
            g["pos_embed"] = dpos
        dt, g["cls_token"] = cls_backward(dt)
        dx, g["patch_embed.w"], g["patch_embed.b"] = patch_embed_backward(dt, caches[0])
        return dx, g

    def backward_head(self, dlogits, head_caches, g: dict):
        """dlogits (B, K) -> dtokens (B, N, D); puts the head, pre-logits and norm grads in g."""
        (B, N, D), c_norm, c_pre, c_head = head_caches
        xp = backend.xp_of(dlogits)
        dh, g["head.w"], g["head.b"] = linear_backward(dlogits, c_head)
        if c_pre is not None:
            dh = tanh_backward(dh, c_pre[1])
            dh, g["pre_logits.w"], g["pre_logits.b"] = linear_backward(dh, c_pre[0])
        dt = xp.zeros((B, N, D), dtype=dlogits.dtype)                         # (B, N, D)
        if self.config.pool == "cls":
            dt[:, 0], g["norm.w"], g["norm.b"] = layernorm_backward(dh, c_norm)
        else:
            dnorm = xp.zeros_like(dt)
            dnorm[:, 1:] = (dh / (N - 1))[:, None, :]
            dt, g["norm.w"], g["norm.b"] = layernorm_backward(dnorm, c_norm)
        return dt

    # ---- helpers --------------------------------------------------------------------------
    def block_params(self) -> list:
        """Per block, a dict of its params by short name (views into self.params)."""
        p = self.params
        return [{k: p[f"blocks.{i}.{k}"] for k in BLOCK_KEYS} for i in range(self.config.depth)]

    def head_keys(self) -> list:
        """The parameters after the blocks: final norm, [pre-logits], head."""
        return [k for k in self.params if k.startswith(("norm.", "pre_logits.", "head."))]

    def zero_grad(self) -> None:
        for v in self.grads.values():
            v[...] = 0

    def num_params(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    def check_input(self, x):
        """Validate images (B, C, S, S) and cast them to the model's dtype; raise a clear error."""
        cfg = self.config
        S, C = cfg.image_size, cfg.in_channels
        if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
            raise TypeError(f"expected an array of images (B, {C}, {S}, {S}), got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, {C}, {S}, {S}) (ndim 4), got shape "
                             f"{tuple(x.shape)}; add a batch axis with x[None] or a channel axis "
                             f"with x[:, None]")
        if x.shape[1] != C:
            raise ValueError(f"expected {C} channel(s) in axis 1 (B, C, H, W), got shape "
                             f"{tuple(x.shape)}; images must be channels-first, or build the model "
                             f"with in_channels={x.shape[1]}")
        if x.shape[2:] != (S, S):
            raise ValueError(f"expected {S}x{S} images, got {x.shape[2]}x{x.shape[3]}; resize the "
                             f"images or build the model with image_size={x.shape[2]} "
                             f"(square images only)")
        if x.dtype.kind != "f" or x.dtype.itemsize < 4:
            raise TypeError(f"expected float32 or float64 images, got {x.dtype}; convert with "
                            f"x.astype('float32') (and scale uint8 pixels to [0, 1] and normalize)")
        xp = backend.xp_of(x)
        if xp is not backend.xp_of(self.params["head.w"]):
            raise TypeError(f"input is a {xp.__name__} array but the model lives on "
                            f"{backend.xp_of(self.params['head.w']).__name__}; move it with "
                            f"minivit.backend.asarray(x) (or build the model after backend.use())")
        if not bool(xp.isfinite(x).all()):
            raise ValueError("input contains NaN or inf; check the data pipeline (e.g. a "
                             "division by a zero std) before calling forward")
        return x.astype(cfg.dtype, copy=False)
