"""Helpers shared by tests/kernels: a pair's gradient check, one block's parameters, the
comparison of a fast kernel's result with the reference pair's, and the kernels_on fixture
(import it into a test module to use it)."""
import numpy as np
import pytest

from minivit import backend, kernels
from minivit.gradcheck import check_grads

from conftest import randn


@pytest.fixture
def kernels_on():
    """Kernels on for the test (the default), the previous state back after it."""
    before = kernels.enabled()
    kernels.on()
    yield
    (kernels.on if before else kernels.off)()

TOL = 1e-6                  # gradient checks: max relative error in float64

BLOCK_SHAPES = {"norm1.w": "D", "norm1.b": "D", "attn.qkv.w": "D,3D", "attn.qkv.b": "3D",
                "attn.proj.w": "D,D", "attn.proj.b": "D", "ls1.g": "D", "norm2.w": "D",
                "norm2.b": "D", "mlp.fc1.w": "D,F", "mlp.fc1.b": "F", "mlp.fc2.w": "F,D",
                "mlp.fc2.b": "D", "ls2.g": "D"}


def check_pair(forward, backward, inputs, dy, names, **kwargs):
    """Check backward(dy, cache) against d/dinputs sum(forward(*inputs)[0] * dy)."""
    out, cache = forward(*inputs)
    assert out.shape == dy.shape, f"output {out.shape} vs dy {dy.shape}"
    grads = backward(dy, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert len(grads) == len(inputs), f"{len(grads)} grads for {len(inputs)} inputs"
    return check_grads(lambda: float((forward(*inputs)[0] * dy).sum()), inputs, grads, names,
                       tol=TOL, **kwargs)


def block_params(xp, cfg, D: int, F: int) -> dict:
    """Random non-degenerate params of one block by short name, in cfg.block_keys() order
    (LayerNorm scales around 1)."""
    sizes = {"D": D, "3D": 3 * D, "F": F}
    p = {}
    for i, k in enumerate(cfg.block_keys()):
        shape = tuple(sizes[s] for s in BLOCK_SHAPES[k].split(","))
        p[k] = randn(xp, *shape, seed=i, scale=0.7) + (1.0 if k in ("norm1.w", "norm2.w") else 0.0)
    return p


def block_loss_check(fwd, bwd, x, p, dy, **kwargs):
    """Gradient check of a block pair: fwd(x) -> (y, cache), bwd(dy, cache) -> (dx, grads)."""
    _, cache = fwd(x)
    dx, g = bwd(dy, cache)
    assert set(g) == set(p), f"grads {sorted(g)} vs params {sorted(p)}"
    return check_grads(lambda: float((fwd(x)[0] * dy).sum()), [x] + list(p.values()),
                       [dx] + [g[k] for k in p], ["x"] + list(p), tol=TOL, **kwargs)


def assert_close(got, want, rtol: float, what: str = "") -> None:
    """max |got - want| <= rtol * max |want| (a tolerance relative to the array's scale: BLAS and
    the kernels' reductions may sum in another order than the reference, which moves an entry
    near zero by the rounding of its neighbours, not of itself)."""
    got, want = backend.to_numpy(got), backend.to_numpy(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs reference {want.shape}"
    scale = float(np.abs(want).max())
    assert scale > 0, f"{what}: all-zero reference proves nothing"
    err = float(np.abs(got.astype(np.float64) - want).max()) / scale
    assert err <= rtol, f"{what}: max |got - want| / max |want| = {err:.3e} > {rtol:.1e}"
