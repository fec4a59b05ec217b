"""Finite-difference gradient checks in float64.

For a scalar function f of arrays (x_1, ..., x_n) and claimed gradients (g_1, ..., g_n):
- every coordinate of a small array (at most `max_coords`), or a random sample of them, is
  compared with the central difference (f(x + h e_i) - f(x - h e_i)) / 2h;
- `directions` random unit directions v per array compare <g, v> with (f(x + h v) - f(x - h v)) / 2h.
The error of an array is max_i |g_i - n_i| / max_i |n_i| over its checked coordinates (scaled by
the largest numerical gradient, so that coordinates where the gradient crosses zero do not
dominate), and |<g,v> - n_v| / |n_v| for each direction. check_grads raises with the inputs' name,
the worst coordinate and both gradients when any error exceeds `tol`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from . import backend
from .errors import UserError, UserTypeError


def numerical_grad(f: Callable[[], float], x, index, h: float) -> float:
    """Central difference of f() in coordinate `index` of x (x is perturbed in place and restored)."""
    old = x[index].copy() if hasattr(x[index], "copy") else x[index]
    x[index] = old + h
    fp = float(f())
    x[index] = old - h
    fm = float(f())
    x[index] = old
    return (fp - fm) / (2 * h)


def directional_grad(f: Callable[[], float], x, v, h: float) -> float:
    """Central difference of f() along direction v (x is perturbed in place and restored)."""
    x0 = x.copy()
    x[...] = x0 + h * v
    fp = float(f())
    x[...] = x0 - h * v
    fm = float(f())
    x[...] = x0
    return (fp - fm) / (2 * h)


def grad_errors(f: Callable[[], float], inputs: Sequence, grads: Sequence, names=None,
                h: float = 1e-5, max_coords: int = 400, directions: int = 2, seed: int = 0) -> dict:
    """Max relative error of each claimed gradient; f() reads the inputs, which are perturbed in place."""
    names = names or [f"input{i}" for i in range(len(inputs))]
    rng = np.random.default_rng(seed)
    errors = {}
    for name, x, g in zip(names, inputs, grads):
        if x.dtype != np.float64:
            raise UserTypeError(f"gradient checks need float64 inputs, got {x.dtype} for {name}")
        if g is None or tuple(g.shape) != tuple(x.shape):
            raise UserError(f"gradient of {name} has shape {getattr(g, 'shape', None)}, "
                            f"expected {tuple(x.shape)}")
        g_host = backend.to_numpy(g)
        flat = range(x.size) if x.size <= max_coords else rng.choice(x.size, max_coords, replace=False)
        idx = [np.unravel_index(i, x.shape) for i in flat]
        num = np.array([numerical_grad(f, x, i, h) for i in idx])
        ana = np.array([g_host[i] for i in idx])
        worst = int(np.argmax(np.abs(ana - num)))
        err = float(np.abs(ana - num).max() / max(np.abs(num).max(), 1e-300))
        for _ in range(directions):
            v = rng.standard_normal(x.shape)
            v /= np.linalg.norm(v)
            n_v = directional_grad(f, x, backend.asarray(v) if not isinstance(x, np.ndarray) else v, h)
            a_v = float((g_host * v).sum())
            err = max(err, abs(a_v - n_v) / max(abs(n_v), 1e-300))
        errors[name] = (err, idx[worst], float(ana[worst]), float(num[worst]))
    return errors


def check_grads(f: Callable[[], float], inputs: Sequence, grads: Sequence, names=None,
                tol: float = 1e-6, **kwargs) -> dict:
    """Assert every claimed gradient matches central differences to relative `tol`; return errors."""
    errors = grad_errors(f, inputs, grads, names, **kwargs)
    bad = {k: e for k, e in errors.items() if not e[0] <= tol}
    if bad:
        lines = [f"  {k}: rel err {e[0]:.3e} (worst coord {e[1]}: analytic {e[2]:.10g}, "
                 f"numerical {e[3]:.10g})" for k, e in bad.items()]
        raise AssertionError("gradient check failed (tol %.1e):\n" % tol + "\n".join(lines))
    return {k: e[0] for k, e in errors.items()}
