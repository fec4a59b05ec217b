"""The commands' CPU runtime: built once from the environment and the flags (use_device), given
to every model a command builds or loads; under MPI, each process's share of the host's cores."""
import os
import types

import pytest

from minivit import ViT, ViTConfig
from minivit.cli import load_model, train, use_device
from minivit.io.checkpoint import save_checkpoint
from minivit.parallel import Single, cores_per_process, threads
from minivit.parallel.threads import Runtime

from conftest import write_mnist


@pytest.fixture
def blas_kept():
    """use_device sets the main thread's BLAS threads: back as they were after the test."""
    before = threads.blas_threads()
    yield
    if before is not None:
        threads.set_blas_threads(before)


def test_use_device_builds_the_runtime_from_env_and_flags(monkeypatch, blas_kept):
    monkeypatch.setenv("MINIVIT_WORKERS", "3")
    monkeypatch.setenv("MINIVIT_NO_MALLOPT", "1")
    args = types.SimpleNamespace(device="cpu", tf32=False, workers=None)
    assert use_device(args) == Runtime(workers=3, tune_allocator=False)
    args.workers = 2                                      # --workers over MINIVIT_WORKERS
    assert use_device(args, Single()) == Runtime(workers=2, tune_allocator=False)
    host = types.SimpleNamespace(size=4, local_size=2)   # 2 of a job's 4 processes on this host
    share = max(1, (os.cpu_count() or 1) // 2)
    assert cores_per_process(host) == share and cores_per_process(Single()) is None
    runtime = use_device(args, host)
    assert runtime == Runtime(cores=share, workers=2, tune_allocator=False)
    if threads.blas_threads() is not None:
        assert threads.blas_threads() == runtime.core_count()           # applied


def test_the_commands_give_their_runtime_to_the_model(tmp_path, monkeypatch, blas_kept):
    """minivit-train --workers 2 trains a model that holds the runtime of its flags; a model a
    command loads gets the command's runtime (load_model)."""
    seen = []

    def fit(model, *args, **kwargs):
        seen.append(model)
        return {}
    monkeypatch.setattr(train, "fit", fit)
    monkeypatch.setenv("MINIVIT_NO_MALLOPT", "1")
    data = write_mnist(tmp_path / "mnist", monkeypatch, n_train=100, n_test=20)
    train.main(["--procs", "1", "--model", "tiny", "--batch-size", "50", "--quiet", "--workers",
                "2", "--data", data, "--out", str(tmp_path / "run")])
    assert seen[0].runtime == Runtime(workers=2, tune_allocator=False)
    path = str(tmp_path / "m.npz")
    save_checkpoint(path, ViT(ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2,
                                        num_classes=3)))
    runtime = Runtime(workers=1)
    model, fmt = load_model(path, runtime=runtime)
    assert fmt == "minivit" and model.runtime is runtime
