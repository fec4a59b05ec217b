"""Optimizers and schedules working on the params/grads dicts, on either backend.

An optimizer never parses parameter names: which keys get weight decay is given to it
(`decay=model.decay_keys()`), and which stay fixed (`frozen=`). Parameters are updated in place,
so the model sees the new values without a copy. Its state (momentum, Adam moments) lives in one
flat vector per buffer, and state[name][key] is a view into it. When params and grads are the
model's ParamDicts (views into one flat vector each), AdamW runs straight over those vectors: a
dozen large operations per step instead of a dozen small ones per key (80 keys for the MNIST
model, ~1,000 calls or GPU kernels), and no gathering copy.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .errors import UserError
from .params import ParamDict


class Optimizer:
    """Shared bookkeeping: learning rate, step count, frozen and decayed keys, state
    (de)serialization. decay: the keys weight decay applies to (None: every trainable key, as
    in torch.optim; pass model.decay_keys() to spare biases, norms and embeddings)."""

    state_names: tuple = ()

    def __init__(self, params: dict, lr: float, weight_decay: float, frozen=(), decay=None):
        if lr <= 0 or not math.isfinite(lr):
            raise UserError(f"lr must be a positive number, got {lr}")
        if weight_decay < 0:
            raise UserError(f"weight_decay must be >= 0, got {weight_decay}")
        unknown = sorted(set(frozen) - set(params))
        if unknown:
            raise UserError(f"frozen names {unknown} are not parameters of this model")
        unknown = sorted(set(decay or ()) - set(params))
        if unknown:
            raise UserError(f"decay names {unknown} are not parameters of this model")
        self.params, self.lr, self.weight_decay = params, float(lr), float(weight_decay)
        self.frozen = set(frozen)
        self.t = 0
        self.keys = [k for k in params if k not in self.frozen]      # the trainable keys
        self.decay = set(self.keys) if decay is None else set(decay) - self.frozen
        # one (start, stop) range of params.flat holding every trainable key, when there is one
        runs = params.runs(set(self.keys)) if isinstance(params, ParamDict) else []
        self.run = runs[0] if len(runs) == 1 else None
        trainable = [params[k] for k in self.keys]
        xp = backend.xp_of(trainable[0]) if trainable else np
        dtype = np.result_type(*[p.dtype for p in trainable]) if trainable else np.float32
        size = sum(p.size for p in trainable)
        self.state_shapes = {k: tuple(params[k].shape) for k in self.keys}
        self.flat = {s: xp.zeros(size, dtype=dtype) for s in self.state_names}
        self.state = {s: self.unflatten(buf, params) for s, buf in self.flat.items()}

    def flatten(self, arrays: dict):
        """The trainable entries of arrays (e.g. the grads) as one (P,) vector: a view of the
        range of arrays.flat they occupy for a ParamDict laid out like the params (read only,
        never written), else a new concatenation."""
        changed = [k for k in self.keys if arrays[k].shape != self.state_shapes[k]]
        if changed:
            raise UserError(f"{changed[:3]} changed shape since this {type(self).__name__} was "
                            f"built (now {tuple(arrays[changed[0]].shape)}, then "
                            f"{self.state_shapes[changed[0]]}); build the optimizer after "
                            f"changing the model (e.g. after reset_head or set_image_size)")
        if self.run is not None and self._same_layout(arrays):
            return arrays.flat[self.run[0]:self.run[1]]
        xp = backend.xp_of(arrays[self.keys[0]])
        return xp.concatenate([arrays[k].ravel() for k in self.keys])

    def _same_layout(self, arrays) -> bool:
        """Whether arrays is a ParamDict laid out like the params (so ranges carry over)."""
        return isinstance(arrays, ParamDict) and arrays.offsets == self.params.offsets

    def unflatten(self, flat, like: dict) -> dict:
        """Views of the (P,) vector flat, one per trainable key, shaped like like[key]."""
        views, i = {}, 0
        for k in self.keys:
            n = like[k].size
            views[k] = flat[i:i + n].reshape(like[k].shape)
            i += n
        return views

    def step(self, grads: dict, lr: float = None) -> None:
        """One update of every trainable parameter from grads (same keys as params)."""
        self.t += 1
        lr = self.lr if lr is None else float(lr)
        for k, p in self.params.items():
            if k not in self.frozen:
                self.update(k, p, grads[k], lr)

    def update(self, k: str, p, g, lr: float) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def state_dict(self) -> dict:
        """Host arrays: 'opt.<state>.<param name>' for each buffer, plus 'opt.t'."""
        d = {f"opt.{s}.{k}": backend.to_numpy(v) for s, buf in self.state.items()
             for k, v in buf.items()}
        d["opt.t"] = np.asarray(self.t, dtype=np.int64)
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore from state_dict(); every key and shape must match (nothing partial)."""
        want = set(self.state_dict())
        missing, extra = sorted(want - set(d)), sorted(set(d) - want)
        if missing or extra:
            raise UserError(f"optimizer state does not match this {type(self).__name__}: "
                            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}; was it "
                            f"saved by another optimizer or model?")
        bad = [f"{k}: {tuple(d[f'opt.{s}.{k}'].shape)} vs {tuple(v.shape)}"
               for s, buf in self.state.items() for k, v in buf.items()
               if tuple(d[f"opt.{s}.{k}"].shape) != tuple(v.shape)]
        if bad:
            raise UserError(f"optimizer state has wrong shapes (saved vs now) {bad[:5]}; "
                            f"it was saved for another model")
        bad = [f"{k}: {np.dtype(d[f'opt.{s}.{k}'].dtype)} vs {np.dtype(v.dtype)}"
               for s, buf in self.state.items() for k, v in buf.items()
               if np.dtype(d[f"opt.{s}.{k}"].dtype) != np.dtype(v.dtype)]
        t = np.asarray(d["opt.t"])
        if t.shape != () or t.dtype.kind not in "iu":
            bad.append(f"opt.t: {t.dtype} {t.shape} vs an integer scalar")
        if bad:
            raise UserError(f"optimizer state has wrong dtypes (saved vs now) {bad[:5]}; "
                            f"build the model with the dtype it was saved with")
        for s, buf in self.state.items():
            for k, v in buf.items():
                v[...] = backend.xp_of(v).asarray(d[f"opt.{s}.{k}"], dtype=v.dtype)
        self.t = int(d["opt.t"])


class SGD(Optimizer):
    """buf = momentum * buf + (g + wd * p);  p -= lr * buf  (Nesterov: p -= lr * (g' + m * buf)).
    The weight decay is the classic coupled L2 term, applied to decayed keys only."""

    state_names = ("momentum",)

    def __init__(self, params: dict, lr: float, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0, frozen=(), decay=None):
        if not 0.0 <= momentum < 1.0:
            raise UserError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise UserError("nesterov=True needs momentum > 0")
        super().__init__(params, lr, weight_decay, frozen, decay)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def update(self, k, p, g, lr):
        if self.weight_decay and k in self.decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = self.state["momentum"][k]
            buf *= self.momentum
            buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= lr * g

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum, "nesterov": self.nesterov}


class AdamW(Optimizer):
    """m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= lr * wd * p (decayed keys only);
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)   (Loshchilov & Hutter; torch.optim.AdamW)."""

    state_names = ("m", "v")
    CHUNK = 1 << 18           # numbers per chunk of a NumPy step (1 MB each of g, m, v, scratch)

    def __init__(self, params: dict, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.05, frozen=(), decay=None):
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise UserError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, lr, weight_decay, frozen, decay)
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)

    def step(self, grads: dict, lr: float = None) -> None:
        """The update above on the flat vectors (module docstring), then p -= its share per key.
        On NumPy the vectors go by in chunks of CHUNK numbers through one chunk-sized scratch
        vector: each chunk's dozen operations run while it sits in the cache, and no
        parameter-sized temporary is made (346 MB for ViT-B/16). Every number gets the same
        operations in the same order either way, so the result does not depend on the chunk."""
        self.t += 1
        if not self.keys:
            return
        lr = self.lr if lr is None else float(lr)
        b1, b2 = self.betas
        m, v = self.flat["m"], self.flat["v"]             # (P,)
        g = self.flatten(grads)                           # (P,), read only
        xp = backend.xp_of(v)
        if self.weight_decay:
            for k in self.decay:
                p = self.params[k]                        # a view: scaled in place
                p *= 1.0 - lr * self.weight_decay
        flat = self.run is not None                       # update the params' own flat vector
        out = self.params.flat[self.run[0]:self.run[1]] if flat else xp.empty_like(m)  # or delta
        size = m.size if xp is not np else min(self.CHUNK, m.size)
        scratch = xp.empty(size, dtype=m.dtype)
        unbias1, unbias2 = lr / (1.0 - b1 ** self.t), 1.0 / (1.0 - b2 ** self.t)
        for a in range(0, m.size, size):
            b = min(a + size, m.size)
            gc, mc, vc, d = g[a:b], m[a:b], v[a:b], scratch[:b - a]
            mc *= b1
            mc += xp.multiply(gc, 1.0 - b1, out=d)        # m = b1 m + (1 - b1) g
            xp.multiply(gc, gc, out=d)
            d *= 1.0 - b2
            vc *= b2
            vc += d                                       # v = b2 v + (1 - b2) g^2
            xp.multiply(vc, unbias2, out=d)
            xp.sqrt(d, out=d)
            d += self.eps                                 # sqrt(v / (1 - b2^t)) + eps
            xp.divide(mc, d, out=d)
            d *= unbias1                                  # lr m_hat / (sqrt(v_hat) + eps)
            if flat:
                out[a:b] -= d
            else:
                out[a:b] = d
        if not flat:                                      # shared out per key
            for k, d in self.unflatten(out, self.params).items():
                p = self.params[k]
                p -= d

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps}


def warmup_cosine(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0,
                  min_lr: float = 0.0) -> float:
    """Learning rate of update number `step` (0-based):
    linear warmup lr = base_lr (step + 1) / warmup_steps for step < warmup_steps, then
    lr = min_lr + (base_lr - min_lr) (1 + cos(pi s)) / 2, s = (step - warmup) / (total - warmup)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    s = min((step - warmup_steps) / span, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * s))


def _on_device(a) -> bool:
    return backend.xp_of(a) is not np


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """norm = sqrt(sum_k ||g_k||^2); if norm > max_norm: g_k *= max_norm / norm (in place), so
    the clipped norm is max_norm exactly (torch adds 1e-6 to the denominator; we do not).
    Returns the norm before clipping. A NaN or inf norm is returned as is and nothing is scaled:
    the caller decides (skip the step, lower the learning rate, or stop).
    On the GPU nothing waits for the device: the norm stays there (a 0-d array) and the scale
    min(1, max_norm / norm) (1 for a NaN or inf norm) is applied there."""
    if max_norm < 0 or not math.isfinite(max_norm):
        raise UserError(f"max_norm must be a finite number >= 0, got {max_norm}")
    if not grads:
        return 0.0
    if isinstance(grads, ParamDict):                      # the model's grads: one flat vector
        flat = grads.flat
    else:
        flat = backend.xp_of(next(iter(grads.values()))).concatenate(
            [g.ravel() for g in grads.values()])         # (P,): one dot, not a sum per key
    xp = backend.xp_of(flat)
    if _on_device(flat):                                  # on the device, without a sync
        total = xp.sqrt(flat @ flat)
        ok = xp.isfinite(total) & (total > max_norm)
        _scale(grads, xp.where(ok, max_norm / xp.where(ok, total, 1), 1).astype(flat.dtype))
        return total
    total = math.sqrt(float(flat @ flat))
    if math.isfinite(total) and total > max_norm:
        _scale(grads, max_norm / total)
    return total


def _scale(grads, scale) -> None:
    """grads *= scale, in place: the flat vector of a ParamDict, else each array."""
    if isinstance(grads, ParamDict):
        grads.flat *= scale
    else:
        for g in grads.values():
            g *= scale
