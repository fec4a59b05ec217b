"""Where minivit's training step goes: the forward and the backward time of each layer, measured
by calling the pairs the model's fast block (minivit/kernels/block.py) calls, the way it calls
them, on the shapes of a real step.

    patch embed         layers: patch_embed_forward/backward                  1 per step
    layernorm normalize kernels.norm: normalize_forward/backward (norm1, 2)    2 per block
    qkv linear          kernels.norm: affine_into_linear (norm1's affine)     1 per block
                        + kernels.linear: linear
    attention core      kernels.attention: attention_forward/backward (NumPy:  1 per block
                        scores keys first), attention_*_gpu (CuPy)
      of which softmax  its softmax pair alone on the scores                 (part of the core)
    attn out proj       kernels.linear: linear (the block's projection)       1 per block
    mlp                 affine_into_linear (norm2's affine) + kernels.block:  1 per block
                        the mlp pair
      of which GELU     kernels.gelu: the GELU pair alone, on the MLP's       (part of mlp)
                        hidden (B, N, F)
    head                layers: head_forward/backward                         1 per step
    loss                layers: cross_entropy_forward/backward                1 per step
    AdamW step          AdamW.step over the model's params and grads          1 per step

qkv linear, attention core and attn out proj are the three pairs of the block's attention branch
(block_qkv_forward, then block_rows_forward), timed apart to see which costs what; the other
block rows are block_forward's own calls. The "of which" rows time one part of the row above
alone (the elementwise work inside it) and are not added to the sum. The weights are the
model's (block 0 stands for every block), the inputs random arrays of the activations' shapes,
B x N tokens split into the model's batch pieces.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, NamedTuple

import numpy as np

from measure import LR, WEIGHT_DECAY, MinivitBench, batch_pieces, time_ms, time_step
from minivit import ViT, backend
from minivit.kernels import attention as fast_attention
from minivit.kernels import fused
from minivit.kernels.block import mlp_backward, mlp_forward
from minivit.kernels.gelu import GELU
from minivit.kernels.linear import linear_backward, linear_forward
from minivit.kernels.norm import (affine_into_linear_backward, affine_into_linear_forward,
                                  affine_linear_inputs, normalize_backward, normalize_forward)
from minivit.layers import (cross_entropy_backward, cross_entropy_forward, head_backward,
                            head_forward, patch_embed_backward, patch_embed_forward)
from minivit.optim import AdamW
from minivit.parallel.threads import Runtime


class Layer(NamedTuple):
    name: str
    calls: int                 # calls per training step
    inputs: Callable           # b -> the forward's inputs for a batch piece of b images
    forward: Callable          # *inputs -> (out, cache)
    backward: Callable         # (dout, cache) -> grads
    part_of: str | None = None # a part of that row, timed alone (not added to the sum)


def gpu_softmax_forward(s):
    """The softmax inside kernels.attention.attention_forward_gpu, alone (CuPy)."""
    a = fused.softmax_exp(s, s.max(-1, keepdims=True))   # (b, H, N, N)
    a /= a.sum(-1, keepdims=True)
    return a, a


def gpu_softmax_backward(da, a):
    return fused.softmax_dx(da, a, (da * a).sum(-1, keepdims=True))


def step_layers(model: ViT) -> list:
    """The layers of model's training step, in the order the step runs them."""
    cfg, p = model.config, model.params
    bp = model.block_params()[0]
    S, C, N, D, K, L = (cfg.image_size, cfg.in_channels, cfg.num_tokens, cfg.dim,
                        cfg.num_classes, cfg.depth)
    rng = np.random.default_rng(1)

    def rand(*shape):
        """b -> a tuple with one random array (b, *shape) of the model's dtype."""
        return lambda b: (backend.asarray(rng.standard_normal((b, *shape)).astype(cfg.dtype)),)

    def qkv_forward(h):                  # block_forward's norm1 affine, then mhsa_forward's qkv linear
        h2, w, b, c_aff = affine_into_linear_forward(h, bp["norm1.w"], bp["norm1.b"],
                                                     bp["attn.qkv.w"], bp["attn.qkv.b"])
        qkv, (_, _, shape) = linear_forward(h2, w, b)     # (b, N, 3D); the block keeps no input
        return qkv, (h, c_aff, shape)

    def qkv_backward(dqkv, cache):
        h, c_aff, shape = cache
        h2, w = affine_linear_inputs(h, c_aff)            # remade, as block_backward does
        dh, dw, db = linear_backward(dqkv, (h2.reshape(-1, shape[-1]), w, shape))
        return affine_into_linear_backward(dh, dw, db, h, c_aff)

    def mlp_affine_forward(h):           # block_forward's norm2 affine, then its MLP branch
        h2, w1, b1, c_aff = affine_into_linear_forward(h, bp["norm2.w"], bp["norm2.b"],
                                                       bp["mlp.fc1.w"], bp["mlp.fc1.b"])
        y, c_mlp = mlp_forward(h2, w1, b1, bp["mlp.fc2.w"], bp["mlp.fc2.b"], cfg.gelu)  # (b, N, D)
        return y, (h, c_aff, c_mlp)

    def mlp_affine_backward(dy, cache):
        h, c_aff, c_mlp = cache
        dh, dw1, db1, dw2, db2 = mlp_backward(dy, c_mlp)
        return (*affine_into_linear_backward(dh, dw1, db1, h, c_aff), dw2, db2)

    numpy = backend.xp() is np
    if numpy:                            # the fast kernels' layout: scores keys first
        core = (lambda qkv: fast_attention.attention_forward(qkv, cfg.heads),
                fast_attention.attention_backward)
        soft, score_shape = (fast_attention.softmax_forward, fast_attention.softmax_backward), \
            (N, cfg.heads, N)            # (N, b, H, N) below
    else:                                # CuPy: queries first, the softmax fused in the core
        core = (lambda qkv: fast_attention.attention_forward_gpu(qkv, cfg.heads),
                fast_attention.attention_backward_gpu)
        soft, score_shape = (gpu_softmax_forward, gpu_softmax_backward), (cfg.heads, N, N)

    def scores(b):                       # attention scores as the core keeps them
        shape = (N, b, *score_shape[1:]) if numpy else (b, *score_shape)
        return (backend.asarray(rng.standard_normal(shape).astype(cfg.dtype)),)

    def labels(b):
        return rand(K)(b) + (backend.asarray(rng.integers(0, K, b)),)   # (b, K), (b,)

    return [
        Layer("patch embed", 1, rand(C, S, S),
              lambda x: patch_embed_forward(x, p["patch_embed.w"], p["patch_embed.b"],
                                            cfg.patch_size),
              patch_embed_backward),
        Layer("layernorm normalize (2/block)", 2 * L, rand(N, D),
              lambda x: normalize_forward(x, cfg.eps), normalize_backward),
        Layer("qkv linear (+norm1 affine)", L, rand(N, D), qkv_forward, qkv_backward),
        Layer("attention core", L, rand(N, 3 * D), *core),
        Layer("  of which softmax", L, scores, *soft, part_of="attention core"),
        Layer("attn out proj", L, rand(N, D),
              lambda o: linear_forward(o, bp["attn.proj.w"], bp["attn.proj.b"]), linear_backward),
        Layer("mlp (+norm2 affine)", L, rand(N, D), mlp_affine_forward, mlp_affine_backward),
        Layer(f"  of which GELU ({cfg.gelu})", L, rand(N, cfg.mlp_dim), *GELU[cfg.gelu],
              part_of="mlp (+norm2 affine)"),
        Layer("head (norm, pool, linear)", 1, rand(N, D),
              lambda t: head_forward(t, p, cfg), head_backward),
        Layer("loss (cross-entropy)", 1, labels,
              cross_entropy_forward, lambda dout, cache: cross_entropy_backward(cache)),
    ]


def time_layer(layer: Layer, sizes: list, reps: int, sync, runtime: Runtime) -> tuple:
    """(forward ms, backward ms) per call. Like the model, each batch piece runs on its own worker
    thread of the model's runtime and times its own calls there (no per-call thread hand-off);
    the slower piece's medians count. Each repetition copies the inputs and the upstream
    gradient (untimed: a pair may work in place or consume them), times the forward, then the
    backward on its cache."""
    def piece(b: int) -> tuple:
        inputs = layer.inputs(b)
        out = layer.forward(*(a.copy() for a in inputs))[0]
        dout = None                                       # the loss returns a float: no dout
        if hasattr(out, "shape"):
            dout = backend.asarray(np.random.default_rng(2).standard_normal(out.shape)
                                   .astype(out.dtype))
        t_f, t_b = [], []
        for rep in range(2 + reps):                       # 2 untimed
            ins = tuple(a.copy() for a in inputs)
            d = None if dout is None else dout.copy()
            sync()
            t0 = time.perf_counter()
            _, cache = layer.forward(*ins)
            sync()
            t1 = time.perf_counter()
            layer.backward(d, cache)
            sync()
            t2 = time.perf_counter()
            if rep >= 2:
                t_f.append((t1 - t0) * 1e3)
                t_b.append((t2 - t1) * 1e3)
        return statistics.median(t_f), statistics.median(t_b)

    res = runtime.parallel_map(piece, sizes)
    return max(r[0] for r in res), max(r[1] for r in res)


def breakdown(bench: MinivitBench, batch: int, reps: int, steps: int, warmup: int) -> list:
    """One record per layer (ms per call and per step = per call x calls per step, share of the
    sum), the AdamW step, then a 'layers_total' record with the sum and the measured train step
    (median of `steps`) for comparison."""
    model, sync = bench.model, bench.sync
    sizes = batch_pieces(batch, bench.cfg, model.runtime)
    rows = []
    for layer in step_layers(model):
        f, b = time_layer(layer, sizes, reps, sync, model.runtime)
        rows.append({"what": "layers", "layer": layer.name, "calls": layer.calls,
                     "fwd_ms_call": f, "bwd_ms_call": b, "fwd_ms": f * layer.calls,
                     "bwd_ms": b * layer.calls, "ms": (f + b) * layer.calls,
                     "part_of": layer.part_of})
    opt = AdamW(model.params, lr=LR, weight_decay=WEIGHT_DECAY, decay=model.decay_keys())
    t = statistics.median(time_ms(lambda: opt.step(model.grads), reps, 2, sync))
    rows.append({"what": "layers", "layer": "AdamW step", "calls": 1, "fwd_ms_call": None,
                 "bwd_ms_call": None, "fwd_ms": None, "bwd_ms": None, "ms": t, "part_of": None})
    total = sum(r["ms"] for r in rows if r["part_of"] is None)
    for r in rows:
        r["share"] = r["ms"] / total
    step_ms = time_step(bench, "train", batch, steps, warmup)["ms"]
    return rows + [{"what": "layers_total", "sum_ms": total, "train_step_ms": step_ms,
                    "chunks": sizes}]
