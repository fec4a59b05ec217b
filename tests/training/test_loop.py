"""End to end: the trainer learns a small synthetic task, leaves every promised file, resumes
exactly (also after Ctrl-C), and the evaluation CLI reads its checkpoint."""
import json
import os
import pathlib
import signal

import numpy as np
import pytest

from minivit.cli import train
from minivit.data import download
from minivit.data import mnist as data
from minivit.training import loop
from minivit.training.evaluate import confusion_matrix, report
from minivit.training.plots import plot_curves

from conftest import has, write_mnist

TINY = ["--procs", "1", "--model", "tiny", "--batch-size", "50", "--quiet", "--warmup-epochs", "0.5",
        "--lr", "3e-3", "--workers", "2"]



@pytest.fixture
def mnist_dir(tmp_path, monkeypatch):
    return write_mnist(tmp_path / "mnist", monkeypatch)   # any download attempt would fail


def final_params(out):
    with np.load(os.path.join(out, "last.npz"), allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith("params/")}


def test_train_learns_and_writes_outputs(mnist_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    summary = train.main(TINY + ["--data", mnist_dir, "--out", out, "--epochs", "5",
                                 "--no-augment"])        # shifts would blur the 2-pixel bars
    assert summary["test_acc"] > 0.9                      # chance is 0.1
    for name in ("last.npz", "best.npz", "metrics.jsonl", "config.json"):
        assert os.path.exists(os.path.join(out, name)), name
    lines = [json.loads(l) for l in pathlib.Path(out, "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3, 4, 5]
    assert {"train_loss", "train_acc", "test_acc", "images_per_s", "lr"} <= set(lines[0])
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    cfg = json.loads(pathlib.Path(out, "config.json").read_text())
    assert cfg["model"]["dim"] == 32 and cfg["train"]["epochs"] == 5
    printed = capsys.readouterr().out.strip().splitlines()
    if has("matplotlib"):
        assert os.path.getsize(os.path.join(out, "curves.png")) > 1000
    else:                                                 # the plot is skipped with a note
        assert not os.path.exists(os.path.join(out, "curves.png"))
        assert any("matplotlib is not installed" in line for line in printed)
    assert json.loads(printed[-1])["test_acc"] == summary["test_acc"]   # the JSON summary line
    assert not [f for f in os.listdir(out) if ".tmp" in f]              # no temporary files left


@pytest.mark.parametrize("stop_at", [20, 27])            # 20 steps per epoch: end, mid-epoch
def test_ctrl_c_saves_and_resume_is_exact(mnist_dir, tmp_path, monkeypatch, capsys, stop_at):
    """k steps straight == stop (Ctrl-C) after some steps + resume from last.npz, bit for bit,
    with dropout and drop path on (so the generator state must be restored too)."""
    straight, cut = str(tmp_path / "a"), str(tmp_path / "b")
    args = TINY + ["--data", mnist_dir, "--epochs", "2", "--dropout", "0.1", "--drop-path", "0.1"]
    train.main(args + ["--out", straight])

    from minivit import optim
    real_step, calls = optim.AdamW.step, {"n": 0}

    def interrupt(self, grads, lr=None):
        calls["n"] += 1
        if calls["n"] == stop_at:                         # a real Ctrl-C, in the middle of a step
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, grads, lr)
    monkeypatch.setattr(optim.AdamW, "step", interrupt)
    with pytest.raises(SystemExit) as e:
        train.main(args + ["--out", cut])
    assert e.value.code == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(optim.AdamW, "step", real_step)
    train.main(args + ["--out", cut, "--resume", os.path.join(cut, "last.npz")])
    a, b = final_params(straight), final_params(cut)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    def lines(run):
        return [json.loads(l) for l in pathlib.Path(run, "metrics.jsonl").read_text().splitlines()]
    whole, resumed = lines(straight), lines(cut)
    assert [m["epoch"] for m in resumed] == [1, 2]
    exact = ("epoch", "step", "lr", "train_loss", "train_acc", "test_acc")
    for a_line, b_line in zip(whole, resumed):            # the interrupted epoch's line too
        assert {k: b_line[k] for k in exact} == {k: a_line[k] for k in exact}
        assert b_line["epoch_time_s"] > 0 and b_line["wall_s"] >= b_line["epoch_time_s"]
    err = capsys.readouterr()
    assert f"resumed from {os.path.join(cut, 'last.npz')} at step {stop_at} (" in err.out
    assert ("(after epoch 1/2)" if stop_at == 20 else "(epoch 2/2, batch 7/20)") in err.out


def test_evaluate_cli(mnist_dir, tmp_path, capsys):
    from minivit import evaluate
    out = str(tmp_path / "run")
    summary = train.main(TINY + ["--data", mnist_dir, "--out", out, "--epochs", "1"])
    capsys.readouterr()
    result = evaluate.main(["--checkpoint", os.path.join(out, "last.npz"), "--data", mnist_dir])
    text = capsys.readouterr().out
    assert "confusion matrix" in text and "per-class accuracy" in text
    assert result["test_acc"] == pytest.approx(summary["test_acc"])


def test_confusion_matrix_and_report():
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    text = report(cm, ["a", "b", "c"])
    assert "accuracy 0.6000 on 5 images" in text and "a: 0.5000" in text


def test_batch_larger_than_data_is_clear(mnist_dir, tmp_path):
    with pytest.raises(ValueError, match="batch"):
        train.main(TINY[:-6] + ["--batch-size", "5000", "--data", mnist_dir, "--out",
                                str(tmp_path / "x"), "--epochs", "1"])


def test_second_ctrl_c_quits_without_a_half_saved_step(mnist_dir, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    handler = signal.getsignal(signal.SIGINT)
    from minivit import optim
    real_step, calls = optim.AdamW.step, {"n": 0}

    def hard_interrupt(self, grads, lr=None):
        calls["n"] += 1
        if calls["n"] == 25:                              # mid epoch 2: two Ctrl-C in a row
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, grads, lr)
    monkeypatch.setattr(optim.AdamW, "step", hard_interrupt)
    with pytest.raises(SystemExit) as e:
        train.main(TINY + ["--data", mnist_dir, "--out", out, "--epochs", "2"])
    assert e.value.code == 130
    assert "without saving" in capsys.readouterr().err
    from minivit.io.checkpoint import read_checkpoint
    assert read_checkpoint(os.path.join(out, "last.npz"))[0]["step"] == 20   # end of epoch 1
    assert signal.getsignal(signal.SIGINT) is handler    # the trainer's handler is gone again


def test_cli_errors_are_one_clear_line(tmp_path, monkeypatch, capsys):
    from minivit.cli import run
    empty = str(tmp_path / "none")
    monkeypatch.setattr(download, "_urlopen", None)           # no network: every mirror fails
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        run(train.main, ["--procs", "1", "--data", empty, "--out", str(tmp_path / "o"), "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: could not download" in err and "--data DIR" in err and "Traceback" not in err
    monkeypatch.setenv("MINIVIT_DEBUG", "1")
    with pytest.raises(data.DataError):
        run(train.main, ["--procs", "1", "--data", empty, "--out", str(tmp_path / "o"), "--quiet"])


def test_diverging_loss_stops_with_advice():
    from minivit import ViT, ViTConfig
    model = ViT(ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, num_classes=3))
    model.params["head.b"][...] = np.inf                  # logits inf - inf = nan
    opts = loop.TrainOptions()
    opt = loop.make_optimizer(model, opts)
    with pytest.raises(FloatingPointError, match="lower --lr"), np.errstate(invalid="ignore"):
        loop.train_step(model, opt, np.zeros((2, 1, 8, 8), np.float32), np.array([0, 1]), 1e-3, opts)


def test_plot_without_matplotlib_says_so(tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    history = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_acc": 0.6}]
    assert plot_curves(history, str(tmp_path / "curves.png")) is False
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "curves.png").exists()


def test_rng_state_only_restored_into_numpy_generators(capsys):
    """CuPy's bit_generator.state is a method: assigning a dict to it would break every later
    draw, so a generator that is not NumPy's gets a note and is left untouched."""
    np_rng = np.random.default_rng(0)
    state = loop.rng_state(np_rng)
    first = np_rng.random()
    loop.set_rng_state(np_rng, state)
    assert np_rng.random() == first                       # restored

    class MethodState:                                    # the shape of CuPy's bit generator
        def state(self):
            return 123

    class OtherGenerator:
        bit_generator = MethodState()

    other = OtherGenerator()
    loop.set_rng_state(other, state)
    assert other.bit_generator.state() == 123             # still a method
    assert "could not restore the dropout generator" in capsys.readouterr().err


def test_read_metrics_skips_every_kind_of_damaged_line(tmp_path):
    """Lines a crash or a fuzzer leaves: not UTF-8, not JSON, nested past the parser's depth, not
    an object, without an integer epoch or the numbers the curves plot; the good ones stay."""
    good = {"epoch": 1, "train_loss": 1.5, "train_acc": 0.5, "test_acc": 0.6}
    lines = [json.dumps(good).encode(), b"\xff\xfe not utf-8", b"{oops", b"[" * 100000,
             b"[1, 2]", json.dumps({**good, "epoch": True}).encode(),
             json.dumps({**good, "epoch": 2, "test_acc": "high"}).encode(),
             json.dumps({"epoch": 3}).encode(), json.dumps({**good, "epoch": 4}).encode()]
    (tmp_path / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert loop.read_metrics(str(tmp_path), 10) == [good, {**good, "epoch": 4}]
    assert loop.read_metrics(str(tmp_path), 3) == [good]
