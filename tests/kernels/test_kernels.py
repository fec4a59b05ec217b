"""minivit/kernels/__init__.py and linear.py: plan() picks the fast kernels, or the reference
pairs alone with kernels.off() / disabled() / MINIVIT_KERNELS=off; the linear kernel equals the
reference linear pair."""
import functools
import os
import subprocess
import sys

import numpy as np
import pytest

from minivit import ViTConfig, backend, kernels
from minivit.kernels import block as fast
from minivit.kernels import linear as klinear
from minivit.kernels.split import token_split_block_forward
from minivit.layers import block as reference
from minivit.layers import linear as rlinear
from minivit.parallel import threads

from conftest import ROOT, randn
from kernel_testing import assert_close, check_pair, kernels_on  # noqa: F401 (a fixture)

CFG = ViTConfig(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2,
                heads=2, dtype="float64")


def _is_reference_plan(plan, batch):
    return (plan.block_forward is reference.block_forward
            and plan.last_block_forward is reference.block_forward
            and plan.block_backward is reference.block_backward
            and plan.pieces == [slice(0, batch)] and plan.one_piece_cores is False)


@pytest.mark.parametrize("train, maps", [(True, False), (False, False), (False, True)])
def test_off_plans_the_reference_in_one_piece(kernels_on, monkeypatch, train, maps):
    monkeypatch.setattr(threads, "MIN_PIECE", 1)          # on, this batch would be split
    rt = threads.Runtime(workers=2)
    assert kernels.enabled()
    kernels.off()
    assert not kernels.enabled()
    assert _is_reference_plan(kernels.plan(CFG, 6, np, train=train, maps=maps, runtime=rt), 6)
    kernels.on()
    assert kernels.enabled()
    on = kernels.plan(CFG, 6, np, train=train, maps=maps, runtime=rt)
    assert not _is_reference_plan(on, 6)


def test_disabled_is_a_context(kernels_on):
    rt = threads.Runtime()
    with kernels.disabled():
        assert not kernels.enabled()
        assert _is_reference_plan(kernels.plan(CFG, 3, np, train=True, maps=False, runtime=rt), 3)
        with kernels.disabled():
            assert not kernels.enabled()
        assert not kernels.enabled()                      # the inner one restores "off"
    assert kernels.enabled()
    with pytest.raises(RuntimeError):
        with kernels.disabled():
            raise RuntimeError("inside")
    assert kernels.enabled()                              # restored on the way out of an error
    kernels.off()
    with kernels.disabled():
        pass
    assert not kernels.enabled()


def test_on_plans_the_fast_block(kernels_on, monkeypatch):
    """NumPy: the fast block and backward, the batch split by the runtime's split_batch; under
    CLS pooling without maps the last block computes the class rows alone (queries)."""
    monkeypatch.setattr(threads, "MIN_PIECE", 1)
    rt = threads.Runtime(workers=2)
    plan = kernels.plan(CFG, 6, np, train=True, maps=False, runtime=rt)
    assert plan.block_forward is fast.block_forward
    assert plan.block_backward is fast.block_backward
    assert plan.pieces == rt.split_batch(6, CFG.num_tokens * CFG.dim)
    assert len(plan.pieces) == 2 and plan.one_piece_cores is False
    last = plan.last_block_forward
    assert isinstance(last, functools.partial) and last.func is fast.block_forward
    assert last.keywords == {"queries": CFG.num_class_tokens}
    with_maps = kernels.plan(CFG, 6, np, train=True, maps=True, runtime=rt)
    assert with_maps.last_block_forward is fast.block_forward
    mean = ViTConfig(**{**CFG.to_dict(), "pool": "mean"})
    mean_plan = kernels.plan(mean, 6, np, train=True, maps=False, runtime=rt)
    assert mean_plan.last_block_forward is fast.block_forward
    distilled = ViTConfig(**{**CFG.to_dict(), "distilled": True})
    last = kernels.plan(distilled, 6, np, train=False, maps=False, runtime=rt).last_block_forward
    assert last.keywords["queries"] == 2
    rt = threads.Runtime(workers=1)                       # one piece: every core's BLAS threads
    plan = kernels.plan(CFG, 6, np, train=True, maps=False, runtime=rt)
    assert plan.pieces == [slice(0, 6)] and plan.one_piece_cores is True


def test_on_plans_the_token_split_for_a_one_piece_inference(kernels_on, monkeypatch):
    if threads.blas_threads() is None:
        pytest.skip("per-thread BLAS control unavailable: nothing is split")
    monkeypatch.setattr(threads, "MIN_TOKEN_PIECE", 1)
    rt = threads.Runtime(workers=2)
    plan = kernels.plan(CFG, 1, np, train=False, maps=False, runtime=rt)
    assert isinstance(plan.block_forward, functools.partial)
    assert plan.block_forward.func is token_split_block_forward
    parts = rt.split_tokens(1, CFG.num_tokens, CFG.dim)
    assert plan.block_forward.keywords["parts"] == parts
    assert plan.block_forward.keywords["runtime"] is rt   # its parts on rt's workers
    last = plan.last_block_forward
    assert last.func is token_split_block_forward and last.keywords["queries"] == 1
    assert plan.block_forward.keywords["streamed"] is False
    monkeypatch.setattr(kernels, "STREAMED_MIN_TOKENS", CFG.num_tokens)
    streamed = kernels.plan(CFG, 1, np, train=False, maps=False, runtime=rt)
    assert streamed.block_forward.func is token_split_block_forward
    assert streamed.block_forward.keywords["streamed"] is True       # each part streams
    trained = kernels.plan(CFG, 1, np, train=True, maps=False, runtime=rt)   # never split
    assert trained.block_forward.func is fast.block_forward
    assert trained.block_forward.keywords == {"streamed": True, "keep": True}


@pytest.mark.parametrize("value, enabled", [("off", False), ("OFF", False), ("0", False),
                                            ("on", True), (None, True)])
def test_environment_variable(value, enabled):
    """MINIVIT_KERNELS=off (or 0, false, no) at import switches the kernels off."""
    env = {k: v for k, v in os.environ.items() if k != "MINIVIT_KERNELS"}
    if value is not None:
        env["MINIVIT_KERNELS"] = value
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    code = ("import numpy as np; from minivit import ViTConfig, backend, kernels; "
            "from minivit.layers import block; "
            "from minivit.parallel.threads import Runtime; "
            "plan = kernels.plan(ViTConfig(), 4, np, train=True, maps=False, runtime=Runtime()); "
            "print(kernels.enabled(), plan.block_forward is block.block_forward)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(enabled), str(not enabled)]


# ---- linear --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_linear_equals_reference(xp, shape, dtype):
    """The same products and bias add (the same bits); db a matrix-vector product, not a sum
    (its order: 1e-15 of the scale in float64, 1e-6 in float32)."""
    x, w, b = (randn(xp, *s, seed=i).astype(dtype) for i, s in enumerate([shape, (5, 4), (4,)]))
    dy = randn(xp, *shape[:-1], 4, seed=9).astype(dtype)
    y_ref, c_ref = rlinear.linear_forward(x, w, b)
    y, c = klinear.linear_forward(x, w, b)
    np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(y_ref))
    assert c[1] is w and c[2] == c_ref[2] == x.shape
    dx_ref, dw_ref, db_ref = rlinear.linear_backward(dy, c_ref)
    dx, dw, db = klinear.linear_backward(dy, c)
    assert dx.dtype == dw.dtype == db.dtype == np.dtype(dtype)
    assert_close(dx, dx_ref, 0.0, "dx")
    assert_close(dw, dw_ref, 0.0, "dw")
    assert_close(db, db_ref, 1e-15 if dtype == "float64" else 1e-6, "db")


def test_linear_kernel_grads(xp):
    x, w, b = randn(xp, 2, 5, 6), randn(xp, 6, 7), randn(xp, 7)
    check_pair(klinear.linear_forward, klinear.linear_backward, (x, w, b), randn(xp, 2, 5, 7),
               ["x", "w", "b"])
