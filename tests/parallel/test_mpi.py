"""Data-parallel training over MPI: 2 processes give the parameters of 1 (float64, up to the order
of the gradient sum), a run resumes across world sizes, only rank 0 writes and prints, and
faults end the whole job with one error. Runs `mpiexec -n 2`; skipped without mpi4py."""
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minivit.parallel import launch

from conftest import ROOT, idx_bytes, synthetic_mnist

pytestmark = pytest.mark.skipif(not launch.mpi_available(),
                                reason="needs mpi4py and mpiexec (pip install -e .[mpi])")
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_driver.py")
FLAGS = ["--model", "tiny", "--batch-size", "40", "--quiet", "--warmup-epochs", "0.5",
         "--lr", "3e-3", "--dtype", "float64", "--dropout", "0.1", "--drop-path", "0.1",
         "--limit-train", "400", "--limit-test", "100"]


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """A synthetic MNIST folder and the environment that lets the driver accept it."""
    folder = tmp_path_factory.mktemp("mnist")
    sums = {}
    for name, arr in synthetic_mnist().items():
        raw = idx_bytes(arr)
        (folder / name).write_bytes(raw)
        sums[name] = hashlib.sha256(raw).hexdigest()
    env = {**os.environ, "MINIVIT_TEST_SUMS": json.dumps(sums), "PYTHONPATH": ROOT}
    return str(folder), env


def run(procs, args, env, timeout=120, **kw):
    """The driver under mpiexec -n procs; on a timeout the whole process group is killed, so a
    hung job leaves no process behind to slow the rest of the suite."""
    cmd = ([launch.mpiexec_path(), "-n", str(procs)] if procs > 1 else []) + \
        [sys.executable, DRIVER] + args
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def kill_group(p) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.communicate()


def params(out):
    with np.load(os.path.join(out, "last.npz"), allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith("params/")}


def assert_same_params(a, b, tol=1e-9):
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        scale = max(float(np.abs(a[k]).max()), 1e-30)
        assert float(np.abs(a[k] - b[k]).max()) / scale <= tol, k


@pytest.fixture(scope="module")
def one_process_run(mnist, tmp_path_factory):
    data, env = mnist
    out = str(tmp_path_factory.mktemp("one"))
    r = run(1, FLAGS + ["--procs", "1", "--epochs", "2", "--data", data, "--out", out], env)
    assert r.returncode == 0, r.stderr
    return out, r


def test_two_processes_equal_one_in_float64(mnist, one_process_run, tmp_path):
    data, env = mnist
    out = str(tmp_path / "two")
    r = run(2, FLAGS + ["--epochs", "2", "--data", data, "--out", out], env)
    assert r.returncode == 0, r.stderr
    assert_same_params(params(one_process_run[0]), params(out))
    summary = json.loads(r.stdout.strip().splitlines()[-1])          # printed once, by rank 0
    assert summary["world_size"] == 2 and summary["steps"] == 20
    assert r.stdout.count('"test_acc"') == 1 and r.stdout.count("epoch 2:") == 1
    one = json.loads(one_process_run[1].stdout.strip().splitlines()[-1])
    assert one["world_size"] == 1 and summary["test_acc"] == one["test_acc"]
    lines = pathlib.Path(out, "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2]       # one writer


def test_resume_from_two_processes_with_one(mnist, one_process_run, tmp_path):
    """Ctrl-C under mpiexec: the ranks agree on a step, rank 0 saves; one process finishes the
    run and ends where the uninterrupted run ended."""
    data, env = mnist
    out = str(tmp_path / "cut")
    args = FLAGS + ["--epochs", "2", "--data", data, "--out", out]
    cmd = [launch.mpiexec_path(), "-n", "2", sys.executable, DRIVER] + args
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    metrics = pathlib.Path(out, "metrics.jsonl")
    deadline = time.time() + 60
    while not metrics.exists() and time.time() < deadline:             # into the second epoch
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise
    last = os.path.join(out, "last.npz")
    assert os.path.exists(last), err
    r = run(1, args + ["--procs", "1", "--resume", last], env)
    assert r.returncode == 0, r.stderr
    assert_same_params(params(one_process_run[0]), params(out))


def test_resume_from_one_process_with_two(mnist, one_process_run, tmp_path):
    data, env = mnist
    out = str(tmp_path / "half")
    r = run(1, FLAGS + ["--procs", "1", "--epochs", "2", "--data", data, "--out", out,
                        "--stop-after-epochs", "1"], env)
    assert r.returncode == 0, r.stderr
    r = run(2, FLAGS + ["--epochs", "2", "--data", data, "--out", out, "--resume",
                        os.path.join(out, "last.npz")], env)
    assert r.returncode == 0, r.stderr
    assert_same_params(params(one_process_run[0]), params(out))


@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_a_fault_on_one_rank_ends_the_job(mnist, tmp_path, kind):
    data, env = mnist
    env = {**env, "MINIVIT_TEST_FAULT": f"1:3:{kind}"}
    t = time.time()
    r = run(2, FLAGS + ["--epochs", "2", "--data", data, "--out", str(tmp_path / "f")], env,
            timeout=60)
    assert r.returncode != 0 and time.time() - t < 50
    if kind == "raise":                                   # in the step: the others learn of it
        errors = [l for l in r.stderr.splitlines() if "error:" in l]   # at the all-reduce
        assert len(errors) == 1 and "injected fault on rank 1" in errors[0], r.stderr
        assert "Traceback" not in r.stderr and "Abort" not in r.stderr and r.returncode == 2


@pytest.mark.parametrize("attempt", range(3))
def test_a_fault_outside_the_step_is_delivered_before_the_abort(mnist, tmp_path, attempt):
    """A failure the other processes cannot learn of at a collective (rank 1's evaluation, while
    rank 0 waits in the evaluation's all-reduce) ends the job by MPI's abort; its error line
    still arrives, each time (the abort waits until the launcher has read it, no fixed pause)."""
    data, env = mnist
    t = time.time()
    r = run(2, FLAGS + ["--epochs", "1", "--data", data, "--out", str(tmp_path / "e")],
            {**env, "MINIVIT_TEST_EVAL_FAULT": "1"}, timeout=60)
    errors = [l for l in r.stderr.splitlines() if "error:" in l]
    assert r.returncode != 0 and time.time() - t < 50
    assert len(errors) == 1 and "[rank 1] error: injected evaluation fault" in errors[0], r.stderr


@pytest.mark.parametrize("fault", ["nan", "full-disk"])
def test_errors_all_processes_meet_during_training_end_the_job_cleanly(mnist, tmp_path, fault):
    """A loss that diverges (one rank's images NaN: every rank sees the summed loss) and a
    checkpoint write that fails on rank 0: one error line, status 2, no MPI abort banner, no
    process left waiting."""
    data, env = mnist
    env = {**env, **({"MINIVIT_TEST_FAULT": "1:3:nan"} if fault == "nan" else
                     {"MINIVIT_TEST_FULL_DISK": "1"})}
    r = run(2, FLAGS + ["--epochs", "1", "--data", data, "--out", str(tmp_path / fault)], env,
            timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Abort" not in r.stderr, r.stderr
    errors = [l for l in r.stderr.splitlines() if "error:" in l]
    words = "the loss became nan" if fault == "nan" else "No space left on device"
    assert len(errors) == 1 and words in errors[0], r.stderr


def test_bad_input_under_mpi_is_one_error(mnist, tmp_path):
    """An error every process meets before training (here the batch size) is one line, with
    status 2 and without MPI's abort banner, and nothing is written."""
    data, env = mnist
    r = run(2, FLAGS + ["--epochs", "1", "--batch-size", "41", "--data", data, "--out",
                        str(tmp_path / "b")], env, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Abort" not in r.stderr
    errors = [l for l in r.stderr.splitlines() if "error:" in l]
    assert len(errors) == 1 and "not divisible by the 2 processes" in errors[0], r.stderr
    assert not os.path.exists(tmp_path / "b")


def test_a_download_happens_on_one_process(mnist, tmp_path):
    """A data folder without MNIST: rank 0 alone tries the download (its lines once), the
    others wait; its failure is one error line, status 2, no abort banner."""
    _, env = mnist
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run(2, FLAGS + ["--epochs", "1", "--data", str(empty), "--out", str(tmp_path / "d")],
            {**env, "MINIVIT_TEST_OFFLINE": "1"}, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Abort" not in r.stderr
    errors = [l for l in r.stderr.splitlines() if "error:" in l]
    assert len(errors) == 1, r.stderr
    lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip() and "error:" not in l
             and "MINIVIT_DEBUG" not in l]
    assert len(lines) == len(set(lines)), lines         # nothing said twice
    assert not os.path.exists(tmp_path / "d")


def test_procs_batch_divisibility_is_refused_before_launch(mnist, tmp_path):
    data, env = mnist
    r = run(1, FLAGS + ["--procs", "2", "--batch-size", "41", "--data", data, "--out",
                        str(tmp_path / "p")], env, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: --batch-size 41 is not divisible "
                                                     "by --procs 2")
