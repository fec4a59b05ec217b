"""parallel/nccl.py without a usable libnccl: one clear error naming what to install (CuPy's
nccl module imports even then, with available = False). Runs without a GPU: the module is faked."""
import sys
import types

import pytest

from minivit.parallel import nccl


def fake_cupy(monkeypatch, available):
    cuda = types.ModuleType("cupy.cuda")
    mod = types.ModuleType("cupy.cuda.nccl")
    if available is not None:
        mod.available = available
    cuda.nccl = mod
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    for name, m in (("cupy", cupy), ("cupy.cuda", cuda), ("cupy.cuda.nccl", mod)):
        monkeypatch.setitem(sys.modules, name, m)
    return mod


def test_unloadable_libnccl_is_one_clear_error(monkeypatch):
    fake_cupy(monkeypatch, available=False)
    with pytest.raises(RuntimeError, match="could not load libnccl; pip install nvidia-nccl"):
        nccl.load_nccl()


def test_loadable_nccl_is_returned(monkeypatch):
    mod = fake_cupy(monkeypatch, available=True)
    assert nccl.load_nccl() is mod
