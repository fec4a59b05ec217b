"""The Vision Transformer: parameters, forward pass and hand-written backward pass.

    x (B, C, S, S) -> patchify + linear (B, P, D) -> [cls; tokens] + pos (B, N, D)
      -> depth x pre-norm encoder block -> LayerNorm -> pool (cls or mean) (B, D)
      -> [tanh pre-logits] -> head (B, K)

The checkpoint families (config.py's later fields) add to this: a distillation token and a
second head (DeiT), register tokens after the class tokens (DINOv2), a position table without
the class rows (timm's no_embed_class), LayerScale in each block, the norm after the mean pool
(fc_norm), and no head at all (num_classes=0: forward returns the pooled features).

`params` and `grads` are ParamDicts: named views into one flat vector each (params.py). The
pairs come from layers/ (the reference) or, where kernels.plan() picks them, from kernels/ (the
same functions, faster; on NumPy a large batch also runs as pieces on worker threads, whose
gradients add up to the whole batch's, summed in piece order: threads.OrderedSum). How it uses
the CPU is the model's runtime (threads.Runtime), which it passes down to the plan.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import numpy as np

from . import backend, kernels
from .config import HEAD_KEYS, Preprocessing, ViTConfig
from .errors import UserError, UserTypeError
from .layers import (BatchRows, dropout_backward, dropout_forward, head_backward, head_forward,
                     insert_tokens_backward, insert_tokens_forward, patch_embed_backward,
                     patch_embed_forward, pos_embed_backward, pos_embed_forward, sincos_2d)
from .parallel import threads
from .parallel.threads import Runtime
from .params import ParamDict

__all__ = ["ViT", "ViTConfig", "init_params", "trunc_normal"]


def trunc_normal(rng: np.random.Generator, shape, std: float = 0.02) -> np.ndarray:
    """Normal(0, std^2) truncated to [-2 std, 2 std] by redrawing the outliers (host, float64)."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return z * std


def init_params(cfg: ViTConfig, seed: int = 0) -> ParamDict:
    """Weights and embeddings ~ truncated normal(std 0.02), biases 0, LayerNorm scale 1 / shift 0,
    LayerScale vectors cfg.layer_scale. Drawn on the host with NumPy so a seed gives the same
    model on every backend."""
    rng = np.random.default_rng(seed)
    shapes = cfg.param_shapes()
    params = ParamDict.zeros(shapes, cfg.dtype, backend.xp())
    for name, shape in shapes.items():
        if name.endswith(".b"):
            continue                                      # zeros already
        if "norm" in name:                                # LayerNorm scale
            params[name] = np.ones(shape)
        elif name.endswith((".ls1.g", ".ls2.g")):         # LayerScale
            params[name] = np.full(shape, cfg.layer_scale)
        else:                                             # weights, tokens, pos_embed
            params[name] = trunc_normal(rng, shape)
    return params


def fixed_pos_table(cfg: ViTConfig) -> np.ndarray:
    """The 'sincos' table (1, rows, D) for cfg's grid, zero in the class-token rows."""
    table = sincos_2d(cfg.grid, cfg.dim, cfg.dtype)[:, 1:]                 # (1, P, D)
    pad = np.zeros((1, cfg.num_pos_prefix, cfg.dim), dtype=table.dtype)
    return np.concatenate([pad, table], axis=1)                            # (1, T' + P, D)


def class_token_slots(cfg: ViTConfig) -> list:
    """(parameter, row it is inserted at) of each class token, in insertion order: CLS at 0,
    the distillation token after it."""
    slots = [("cls_token", 0)] if cfg.class_token else []
    if cfg.distilled:
        slots.append(("dist_token", len(slots)))
    return slots


class Piece(NamedTuple):
    """What one batch piece's training forward keeps for its backward."""
    embed: Optional[tuple]     # (embedding caches, embedding dropout mask); None: head only
    blocks: Optional[list]     # one block cache per block; None: head only (frozen backbone)
    head: object               # HeadCache


class ViT:
    """A Vision Transformer with explicit forward and backward passes.

    model = ViT(ViTConfig(...), seed=0)
    logits = model.forward(x, train=True)    # x (B, C, S, S) float -> (B, K)
    dx = model.backward(dlogits)             # fills model.grads (same keys as model.params)

    runtime: how it uses the CPU (threads.Runtime: the cores, the worker threads a NumPy batch is
    split over), passed down to every forward and backward; default Runtime.from_env(), read
    when the model is built. The commands give every model they build or load theirs.
    init=False: the parameters start as zeros instead of the random init, for a loader that
    writes every one of them (io.layout.build_model).
    """

    def __init__(self, config: ViTConfig, seed: int = 0,
                 preprocessing: Optional[Preprocessing] = None, init: bool = True,
                 runtime: Optional[Runtime] = None):
        if not isinstance(config, ViTConfig):
            raise UserTypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        self.config = config
        self.preprocessing = preprocessing                # how raw images become x, or None
        if runtime is not None and not isinstance(runtime, Runtime):
            raise UserTypeError(f"runtime must be a threads.Runtime, got {type(runtime).__name__}")
        self.runtime = runtime if runtime is not None else Runtime.from_env()   # CPU split
        if init:
            self.params = init_params(config, seed)
        else:                                             # zeros, for a loader that writes all
            self.params = ParamDict.zeros(config.param_shapes(), config.dtype, backend.xp())
        self.grads = ParamDict.zeros(config.param_shapes(), config.dtype,
                                     backend.xp_of(self.params.flat))
        self.frozen: set = set()                          # parameters kept fixed (freeze())
        self.rng = np.random.default_rng(seed + 1)        # host: one mask seed per training step
        self.pos_table = None                             # fixed (1, N, D) table for 'sincos'
        if config.pos_embed == "sincos":
            self.pos_table = backend.asarray(fixed_pos_table(config))
        d = config.depth
        self.drop_path_rates = [config.drop_path * i / max(d - 1, 1) for i in range(d)]
        self._saved = None                                # (B, plan, pieces) of a training forward

    # ---- forward --------------------------------------------------------------------------
    def forward(self, x, train: bool = False, return_attention: bool = False,
                masks: Optional[BatchRows] = None, check_finite: bool = True):
        """Logits (B, K); with return_attention also each block's attention (B, H, N, N).
        train=True applies dropout and drop path and keeps what backward needs (with a frozen
        backbone, see freeze(), only the head's caches); train=False caches nothing.
        masks: where this step's dropout and drop-path masks come from (a BatchRows; default:
        a fresh seed from self.rng, over this batch). A data-parallel trainer passes each
        process's rows of one global batch, so the masks do not depend on the split.
        check_finite=False skips the NaN/inf check of x (a device sync on the GPU), for callers
        whose images are finite by construction (the trainer's normalized uint8 batches)."""
        x = self.check_input(x, check_finite)
        xp, B = backend.xp_of(x), x.shape[0]
        plan = kernels.plan(self.config, B, xp, train=train, maps=return_attention,
                            runtime=self.runtime)
        if train and masks is None:
            masks = BatchRows(int(self.rng.integers(2 ** 63)), 0, B, B)
        keep = train and self.backbone_trainable()
        if plan.one_piece_cores:
            self.runtime.share_cores(1)                   # every core's BLAS threads for it

        def run(rows: slice):
            return self.forward_piece(x[rows], plan, masks.rows(rows) if train else None,
                                      keep, return_attention)

        out = self.runtime.parallel_map(run, plan.pieces)
        self._saved = (B, plan, [o[1] for o in out]) if train else None
        logits = out[0][0] if len(out) == 1 else xp.concatenate([o[0] for o in out])
        if not return_attention:
            return logits
        maps = [xp.concatenate(layer) for layer in zip(*[o[2] for o in out])]   # depth x (B, H, N, N)
        return logits, maps

    def forward_piece(self, x, plan, masks, keep: bool, maps: bool) -> tuple:
        """One piece of the batch: (logits, Piece of caches or None, attention maps)."""
        cfg, blocks = self.config, self.block_params()
        t, c_embed = self.embed_forward(x)                                     # (B, N, D)
        t, m_emb = dropout_forward(t, cfg.dropout, masks)                     # (B, N, D)
        c_blocks, attn = [], []
        for i, p in enumerate(blocks):
            block = plan.last_block_forward if i == cfg.depth - 1 else plan.block_forward
            t, c = block(t, p, cfg, drop_path=self.drop_path_rates[i], rng=masks)  # (B, N, D)
            c_blocks.append(c if keep else None)
            if maps:
                attn.append(c.attn.core.maps())                               # (B, H, N, N)
            del c                       # not kept: gone before the next block runs
        logits, c_head = head_forward(t, self.params, cfg)                    # (B, K)
        piece = Piece((c_embed, m_emb) if keep else None, c_blocks if keep else None, c_head)
        return logits, piece, attn

    def forward_features(self, x):
        """Tokens after the last block (B, N, D), before the final LayerNorm (inference)."""
        x = self.check_input(x)
        plan = kernels.plan(self.config, x.shape[0], backend.xp_of(x), train=False, maps=True,
                            runtime=self.runtime)
        t, _ = self.embed_forward(x)
        for p in self.block_params():
            t, _ = plan.block_forward(t, p, self.config)
        return t

    def embed_forward(self, x):
        """Images (B, C, S, S) -> tokens (B, N, D): the patch embedding, the class tokens (CLS,
        distillation) and the position table (added before the class tokens go in when not
        cfg.pos_embed_cls), then the registers, which carry no position. Returns the tokens
        and the caches (the patch embedding's, the token insertions').
        d: the same pairs in reverse (embed_backward)."""
        cfg, p = self.config, self.params
        pos = p["pos_embed"] if self.pos_table is None else self.pos_table   # (1, T' + P, D)
        t, c_patch = patch_embed_forward(x, p["patch_embed.w"], p["patch_embed.b"], cfg.patch_size)
        if not cfg.pos_embed_cls:
            t, _ = pos_embed_forward(t, pos)                                 # (B, P, D)
        c_tokens = []
        for name, at in class_token_slots(cfg):
            t, c = insert_tokens_forward(t, p[name], at)                     # (B, at + 1 + P, D)
            c_tokens.append(c)
        if cfg.pos_embed_cls:
            t, _ = pos_embed_forward(t, pos)                                 # (B, T' + P, D)
        if cfg.num_registers:
            t, c = insert_tokens_forward(t, p["reg_tokens"], cfg.num_class_tokens)   # (B, N, D)
            c_tokens.append(c)
        return t, (c_patch, c_tokens)

    def embed_backward(self, dt, cache, g: dict):
        """dL/dx (B, C, S, S) from dL/dtokens (B, N, D); the embedding's grads go into g."""
        cfg = self.config
        c_patch, c_tokens = cache[0], list(cache[1])
        if cfg.num_registers:
            dt, g["reg_tokens"] = insert_tokens_backward(dt, c_tokens.pop())
        if cfg.pos_embed_cls:
            dt, dpos = pos_embed_backward(dt)
        for name, _ in reversed(class_token_slots(cfg)):
            dt, g[name] = insert_tokens_backward(dt, c_tokens.pop())
        if not cfg.pos_embed_cls:
            dt, dpos = pos_embed_backward(dt)
        if self.pos_table is None:
            g["pos_embed"] = dpos
        dx, g["patch_embed.w"], g["patch_embed.b"] = patch_embed_backward(dt, c_patch)
        return dx

    # ---- backward -------------------------------------------------------------------------
    def backward(self, dlogits):
        """Given dL/dlogits (B, K) from a training forward, write the gradients into self.grads
        (in place) and return dL/dx. With a frozen backbone (freeze()) only the head's
        gradients are made, the rest are zero, and it returns None."""
        if self._saved is None:
            raise ValueError("backward() needs the caches of a forward(x, train=True); call it "
                             "first (an eval forward caches nothing, and each backward uses them up)")
        B, plan, pieces = self._saved
        K = self.config.num_outputs
        if getattr(dlogits, "shape", None) != (B, K):
            raise ValueError(f"dlogits has shape {getattr(dlogits, 'shape', None)}, expected "
                             f"({B}, {K}) like the logits of the last forward")
        self._saved = None
        if pieces[0].blocks is None:
            self.grads.flat[...] = 0                      # a frozen backbone: only the head's grads
        total = threads.OrderedSum(len(pieces))           # grads = piece 0's + piece 1's + ...
        if plan.one_piece_cores:
            self.runtime.share_cores(1)

        def run(i: int):
            def put(g: dict):
                for k, v in g.items():
                    total.add(i, self.grads[k], v)
            try:
                return self.backward_piece(dlogits[plan.pieces[i]], pieces[i], plan, put)
            except BaseException:
                total.fail()
                raise

        dx = self.runtime.parallel_map(run, list(range(len(pieces))))
        if dx[0] is None or len(dx) == 1:
            return dx[0]
        return backend.xp_of(dlogits).concatenate(dx)

    def backward_piece(self, dlogits, piece: Piece, plan, put) -> object:
        """Backward of one piece's forward: returns its dx (None when the forward kept no
        backbone caches) and hands its parameter gradients to put(dict) as they are made: the
        head's, each block's (last to first), the embedding's."""
        dt, g = head_backward(dlogits, piece.head)                            # (B, N, D)
        put(g)
        if piece.blocks is None:
            return None
        for i in reversed(range(self.config.depth)):
            dt, gb = plan.block_backward(dt, piece.blocks[i])                  # (B, N, D)
            put({f"blocks.{i}.{k}": v for k, v in gb.items()})
        c_embed, m_emb = piece.embed
        g = {}
        dx = self.embed_backward(dropout_backward(dt, m_emb), c_embed, g)     # (B, C, S, S)
        put(g)
        return dx

    # ---- parameters -----------------------------------------------------------------------
    def block_params(self) -> list:
        """Per block, a dict of its params by short name (views into self.params)."""
        p, keys = self.params, self.config.block_keys()
        return [{k: p[f"blocks.{i}.{k}"] for k in keys} for i in range(self.config.depth)]

    def head_keys(self) -> list:
        """The classifier: head.w/.b and, in a distilled model, head_dist.w/.b: what
        reset_head replaces and head-only fine-tuning trains."""
        return [k for k in self.params if k.startswith(("head.", "head_dist."))]

    def freeze(self, keys) -> "ViT":
        """Keep these parameters fixed from now on (replacing any earlier set): optimizers built
        with frozen=model.frozen skip them, clipping leaves them out, and when every trainable
        parameter lies after the blocks (final norm, pre-logits, heads) a training forward keeps
        only the head's caches. freeze(()) unfreezes everything."""
        keys = set(keys)
        unknown = sorted(keys - set(self.params))
        if unknown:
            raise UserError(f"cannot freeze {unknown}: not parameters of this model")
        self.frozen = keys
        return self

    def trainable_keys(self) -> list:
        """The parameters not frozen, in order."""
        return [k for k in self.params if k not in self.frozen]

    def backbone_trainable(self) -> bool:
        """Whether some trainable parameter lies before the head (so backward needs the
        blocks' caches)."""
        return any(k not in HEAD_KEYS for k in self.trainable_keys())

    def decay_keys(self) -> set:
        """The parameters weight decay applies to: the weight matrices of the linear layers
        (patch embedding, qkv, proj, fc1, fc2, pre-logits, head), the model's only 2-D
        parameters; never biases, LayerNorm or LayerScale parameters, the class and register
        tokens or the position table."""
        return {k for k, v in self.params.items() if v.ndim == 2}

    def zero_grad(self) -> None:
        self.grads.flat[...] = 0

    def num_params(self) -> int:
        return int(self.params.flat.size)

    def _set_params(self, config: ViTConfig, arrays: dict) -> None:
        """Adopt a new config and new parameter arrays (new shapes): fresh flat buffers."""
        xp = backend.xp_of(self.params.flat)
        shapes = config.param_shapes()
        missing = sorted(set(shapes) - set(arrays))
        if missing:
            raise UserError(f"no values for {missing}")
        self.params = ParamDict.zeros(shapes, config.dtype, xp)
        for k in shapes:
            self.params[k] = xp.asarray(arrays[k], dtype=config.dtype)
        self.grads = ParamDict.zeros(shapes, config.dtype, xp)
        self.frozen = self.frozen & set(shapes)
        self.config = config
        self._saved = None                                # stale after a change of shapes

    def reset_head(self, num_classes: int, keep_pre_logits: bool = False) -> "ViT":
        """A new task head, zero-initialized (weights and bias 0) as in the ViT paper's
        fine-tuning (both heads of a distilled model). The tanh pre-logits layer is dropped too
        unless keep_pre_logits (vit_jax's 'drop-head variant'). Works on a headless model
        (num_classes=0) too. In place; an optimizer must be built after it."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise UserError(f"num_classes must be a positive integer for a new head, got "
                            f"{num_classes!r}")
        cfg = dataclasses.replace(self.config, num_classes=num_classes)
        if not keep_pre_logits:
            cfg = dataclasses.replace(cfg, representation_size=None)
        arrays = {k: v for k, v in self.params.items() if not k.startswith(("head.", "head_dist."))}
        xp = backend.xp_of(self.params.flat)
        heads = ("head", "head_dist") if cfg.distilled else ("head",)
        for h in heads:
            arrays[h + ".w"] = xp.zeros((cfg.num_features, num_classes), dtype=cfg.dtype)
            arrays[h + ".b"] = xp.zeros((num_classes,), dtype=cfg.dtype)
        self._set_params(cfg, arrays)
        if self.preprocessing is not None:
            self.preprocessing = dataclasses.replace(self.preprocessing, class_names=None)
        return self

    def set_image_size(self, image_size: int, method: str = "bilinear",
                       align_corners: bool = True, antialias: bool = False) -> "ViT":
        """Run at image_size x image_size: resample the patch rows of the learned position
        table (resample.py; the class-token rows stay) or rebuild the fixed sincos table for the
        new grid. In place; an optimizer must be built after it."""
        from .resample import resize_pos_embed
        cfg = dataclasses.replace(self.config, image_size=image_size)     # validates divisibility
        arrays = dict(self.params)
        if cfg.pos_embed == "learned":
            arrays["pos_embed"] = resize_pos_embed(self.params["pos_embed"], cfg.grid, method,
                                                   align_corners, prefix=cfg.num_pos_prefix,
                                                   antialias=antialias)   # (1, T' + P', D) host
        else:
            self.pos_table = backend.xp_of(self.params.flat).asarray(fixed_pos_table(cfg))
        self._set_params(cfg, arrays)
        pre = self.preprocessing
        if pre is not None and pre.image_size is not None:
            resize = pre.resize_size                      # keep the resize : crop ratio
            if resize is not None:
                resize = max(image_size, resize * image_size // pre.image_size)
            self.preprocessing = dataclasses.replace(pre, image_size=image_size, resize_size=resize)
        return self

    # ---- input ----------------------------------------------------------------------------
    def check_input(self, x, check_finite: bool = True):
        """Validate images (B, C, S, S) and cast them to the model's dtype; raise a clear error.
        check_finite=False leaves out the NaN/inf check, the one that reads the data."""
        cfg = self.config
        S, C = cfg.image_size, cfg.in_channels
        if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
            raise UserTypeError(f"expected an array of images (B, {C}, {S}, {S}), got "
                                f"{type(x).__name__}")
        if x.ndim != 4:
            raise UserError(f"expected images of shape (B, {C}, {S}, {S}) (ndim 4), got shape "
                            f"{tuple(x.shape)}; add a batch axis with x[None] or a channel axis "
                            f"with x[:, None]")
        if x.shape[1] != C:
            raise UserError(f"expected {C} channel(s) in axis 1 (B, C, H, W), got shape "
                            f"{tuple(x.shape)}; images must be channels-first, or build the model "
                            f"with in_channels={x.shape[1]}")
        if x.shape[2:] != (S, S):
            raise UserError(f"expected {S}x{S} images, got {x.shape[2]}x{x.shape[3]}; resize the "
                            f"images or build the model with image_size={x.shape[2]} "
                            f"(square images only)")
        if x.dtype.kind != "f" or x.dtype.itemsize < 4:
            raise UserTypeError(f"expected float32 or float64 images, got {x.dtype}; convert with "
                                f"x.astype('float32') (and scale uint8 pixels to [0, 1] and "
                                f"normalize)")
        xp = backend.xp_of(x)
        if xp is not backend.xp_of(self.params.flat):
            raise UserTypeError(f"input is a {xp.__name__} array but the model lives on "
                                f"{backend.xp_of(self.params.flat).__name__}; move it with "
                                f"minivit.backend.asarray(x) (or build the model after "
                                f"backend.use())")
        if check_finite and not bool(xp.isfinite(x).all()):
            raise UserError("input contains NaN or inf; check the data pipeline (e.g. a "
                            "division by a zero std) before calling forward")
        return x.astype(cfg.dtype, copy=False)
