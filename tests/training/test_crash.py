"""A trainer killed at any moment, or out of disk: nothing is lost and nothing is left over.

test_sigkill_at_several_moments_then_resume kills a short run (SIGKILL, in a child process) in
the middle of a step, in the middle of a checkpoint write, just after a checkpoint's rename and in
the middle of the metrics write; each time it resumes from last.npz (or starts again when there is
none). At the end the parameters equal an uninterrupted run's bit for bit, metrics.jsonl holds
each epoch once, and no temporary file is left.
"""
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from minivit import ViT, ViTConfig, files, optim
from minivit.cli import run, train as train_cli
from minivit.data import download
from minivit.data import mnist
from minivit.data.batches import Dataset
from minivit.training.loop import OUTPUTS, TrainOptions, fit

from conftest import ROOT, idx_bytes
from test_files import failing_disk

CFG = ViTConfig(image_size=28, patch_size=7, dim=16, depth=1, heads=2, num_classes=10,
                dropout=0.1, drop_path=0.1)
OPTS = TrainOptions(epochs=3, batch_size=50, lr=3e-3, warmup_epochs=0.5, augment=True, seed=0)


def tiny_mnist(n_train=200, n_test=50, seed=0) -> tuple:
    """uint8 (n, 28, 28) 'digits' (class k: a bright bar on row band k) and uint8 labels."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (n_train, n_test):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for k in range(10):
            x[y == k, 2 + 2 * k:4 + 2 * k, 4:24] = 255
        out += [x, y]
    return tuple(out)


def train(out: str) -> None:
    """Train CFG with OPTS in out, resuming from out/last.npz when it exists."""
    x_train, y_train, x_test, y_test = tiny_mnist()
    data = Dataset(x_train, y_train, x_test, y_test, mnist.PREPROCESSING)
    last = os.path.join(out, "last.npz")
    fit(ViT(CFG, seed=0), data, OPTS, out, resume=last if os.path.exists(last) else None,
        quiet=True)


def kill_at(moment: str, target: str, n: int) -> None:
    """SIGKILL this process at the n-th `moment`: 'step' (an optimizer step, before it runs),
    'write' (halfway through writing the file `target`) or 'rename' (just after `target` was
    renamed into place)."""
    count = {"n": 0}

    def now():
        count["n"] += 1
        if count["n"] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    if moment == "step":
        real_step = optim.AdamW.step

        def step(self, *args, **kwargs):
            now()
            return real_step(self, *args, **kwargs)
        optim.AdamW.step = step
    elif moment == "rename":
        real_replace = files.os.replace

        def replace(src, dst):
            real_replace(src, dst)
            if os.path.basename(dst) == target:
                now()
        files.os.replace = replace
    else:
        real_mkstemp, real_fdopen, made = files.tempfile.mkstemp, files.os.fdopen, {}

        def mkstemp(*args, **kwargs):
            fd, tmp = real_mkstemp(*args, **kwargs)
            made[fd] = os.path.basename(tmp)
            return fd, tmp

        class HalfWritten:                                # writes half of it, then dies
            def __init__(self, f):
                self.f = f

            def write(self, data):
                self.f.write(bytes(data)[:max(len(data) // 2, 1)])
                self.f.flush()
                now()
                return self.f.write(bytes(data)[max(len(data) // 2, 1):])

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def fdopen(fd, *args, **kwargs):
            f = real_fdopen(fd, *args, **kwargs)
            return HalfWritten(f) if made.pop(fd, "").startswith(target + ".") else f
        files.tempfile.mkstemp, files.os.fdopen = mkstemp, fdopen


def child() -> None:
    """python -c 'import test_crash; test_crash.child()' OUT MOMENT TARGET N"""
    out, moment, target, n = sys.argv[1:5]
    kill_at(moment, target, int(n))
    train(out)


def run_killed(out: str, moment: str, target: str, n: int) -> subprocess.CompletedProcess:
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.path.dirname(tests), ROOT])}
    return subprocess.run([sys.executable, "-c", "import test_crash; test_crash.child()", out,
                           moment, target, str(n)], env=env, capture_output=True, text=True,
                          timeout=120)


def temps(out: str) -> list:
    """The files that the temporary files in out were to become."""
    return sorted(re.sub(r"(\.\d+)?\.[^.]+\.tmp$", "", f) for f in os.listdir(out)
                  if f.endswith(".tmp"))


def epochs(out: str) -> list:
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [json.loads(line)["epoch"] for line in open(path).read().splitlines()]


def checkpoint_epoch(out: str):
    path = os.path.join(out, "last.npz")
    return json.loads(files.read_npz(path)["meta"].tobytes())["epoch"] if os.path.exists(path) \
        else None


def arrays(path: str) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k != "meta"}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_at_several_moments_then_resume(tmp_path):
    straight, out = str(tmp_path / "straight"), str(tmp_path / "killed")
    train(straight)
    # (moment, target, n, then: last.npz's epoch, metrics.jsonl's epochs, temporary files)
    plan = [("write", "last.npz", 1, None, [], ["last.npz"]),        # mid-write of epoch 1's
            ("rename", "last.npz", 2, 2, [1], []),                   # epoch 2 saved, not logged
            ("step", "", 3, 2, [1, 2], []),                          # mid epoch 3; log rewritten
            ("write", "metrics.jsonl", 2, 3, [1, 2], ["metrics.jsonl"])]
    for moment, target, n, ckpt_epoch, logged, left in plan:
        proc = run_killed(out, moment, target, n)
        assert proc.returncode == -signal.SIGKILL, (moment, proc.stderr)
        assert checkpoint_epoch(out) == ckpt_epoch, moment
        assert epochs(out) == logged, moment
        assert temps(out) == left, moment
    train(out)                                            # the last resume runs to the end
    assert temps(out) == [] and epochs(out) == epochs(straight) == [1, 2, 3]
    for name in ("last.npz", "best.npz"):
        a, b = arrays(os.path.join(straight, name)), arrays(os.path.join(out, name))
        assert a.keys() == b.keys() and len(a) > 10
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")
    timing = {"epoch_time_s", "images_per_s", "wall_s"}
    logs = [[{k: v for k, v in json.loads(line).items() if k not in timing}
             for line in open(os.path.join(d, "metrics.jsonl"))] for d in (straight, out)]
    assert logs[0] == logs[1]                             # same losses, accuracies, steps, lr


def test_resume_from_a_checkpoint_without_history_keeps_the_log(tmp_path):
    """A checkpoint written outside fit has no history: the log keeps its own lines up to the
    checkpoint's epoch, each once."""
    from minivit.io.checkpoint import save_checkpoint
    from minivit.training.loop import make_optimizer
    out = str(tmp_path)
    model = ViT(CFG, seed=0)
    save_checkpoint(os.path.join(out, "last.npz"), model, make_optimizer(model, OPTS),
                    step=3 * 4, epoch=3)                  # 200 // 50 = 4 steps per epoch
    lines = [{"epoch": e, "train_loss": 1.0 / k, "train_acc": 0.5, "test_acc": 0.5}
             for k, e in enumerate((1, 2, 2, 3, 4), start=1)]
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in lines) + "{damaged\n")
    train(out)                                            # resumes at the end: nothing to train
    assert [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))] == \
        [lines[0], lines[2], lines[3]]


# ---- a full disk while training -----------------------------------------------------------------
@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """An MNIST folder of tiny IDX files (their sums), and a 1-epoch run's output folder."""
    root = tmp_path_factory.mktemp("disk")
    data = root / "mnist"
    data.mkdir()
    sums = {}
    for name, arr in zip(mnist.MNIST_FILES, tiny_mnist(100, 50)):
        raw = idx_bytes(arr)
        (data / name).write_bytes(raw)
        sums[name] = hashlib.sha256(raw).hexdigest()
    mp = pytest.MonkeyPatch()
    mp.setattr(mnist, "MNIST_FILES", {**mnist.MNIST_FILES, **sums})
    argv = (["--procs", "1"] if "--procs" in train_cli.build_parser().format_help() else []) + [
        "--model", "tiny", "--batch-size", "50", "--epochs", "1", "--quiet", "--data", str(data),
        "--out", str(root / "run")]
    train_cli.main(argv)
    mp.undo()
    return argv, sums, str(root / "run")


@pytest.mark.parametrize("target", OUTPUTS)
def test_full_disk_is_one_error_line_and_keeps_old_files(first_run, tmp_path, monkeypatch, capsys,
                                                        target):
    if target == "curves.png":
        pytest.importorskip("matplotlib")
    argv, sums, run_dir = first_run
    out = str(tmp_path / "run")
    shutil.copytree(run_dir, out)
    before = {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)}
    monkeypatch.setattr(mnist, "MNIST_FILES", {**mnist.MNIST_FILES, **sums})
    monkeypatch.setattr(download, "_urlopen", None)
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)
    failing_disk(monkeypatch, target, errno.ENOSPC)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:                  # the same run again: every file rewritten
        run(train_cli.main, argv[:-1] + [out, "--overwrite"])
    err = capsys.readouterr().err
    path = os.path.join(out, target)
    assert e.value.code == 2 and "Traceback" not in err
    assert err.startswith(f"error: cannot write {path}: No space left on device; the disk is "
                          f"full"), err
    assert open(path, "rb").read() == before[target]      # the old file, whole
    assert temps(out) == []
