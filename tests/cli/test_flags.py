"""Every flag checked up front, and outputs that never replace a user's files.

A table of bad values for every command's numeric and path flags: each exits with status 2 at
parsing, with one line naming the flag and the value, and leaves no file behind. Then the output
rule (minivit/cli/flags.py): a training run into a folder holding an earlier run goes to a
numbered folder beside it, --overwrite writes into it, --resume continues it; io convert refuses
its own source, an existing destination and a path of the wrong kind.
"""
import json
import os

import numpy as np
import pytest

from minivit import ViT, ViTConfig
from minivit.cli import attention, embed, evaluate, finetune, io as io_cli, predict, run, train
from minivit.data import download
from minivit.io.checkpoint import save_checkpoint

from conftest import write_mnist

# (flag, bad value, the words of its message), per command; a value that parses but breaks a
# rule (a count of 0, a rate of 1) as well as one that does not parse
TRAIN = [("--epochs", "0", ">= 1"), ("--epochs", "-1", ">= 1"), ("--epochs", "two", ">= 1"),
         ("--stop-after-epochs", "0", ">= 1"), ("--batch-size", "0", ">= 1"),
         ("--batch-size", "-3", ">= 1"), ("--limit-train", "-5", ">= 1"),
         ("--limit-test", "0", ">= 1"), ("--lr", "0", "> 0"), ("--lr", "-0.001", "> 0"),
         ("--lr", "nan", "> 0"), ("--min-lr", "-1", ">= 0"), ("--weight-decay", "-0.1", ">= 0"),
         ("--warmup-epochs", "-1", ">= 0"), ("--smoothing", "1.5", "[0, 1)"),
         ("--smoothing", "1", "[0, 1)"), ("--smoothing", "-0.1", "[0, 1)"),
         ("--clip", "-1", ">= 0"), ("--dropout", "1", "[0, 1)"), ("--drop-path", "-0.5", "[0, 1)"),
         ("--seed", "-1", ">= 0"), ("--workers", "0", ">= 1"), ("--data", "FILE", "a file"),
         ("--out", "FILE", "a file"), ("--resume", "MISSING", "no such file"),
         ("--resume", "FOLDER", "a folder")]
FINETUNE = [("--epochs", "0", ">= 1"), ("--batch-size", "0", ">= 1"), ("--lr", "0", "> 0"),
            ("--weight-decay", "-1", ">= 0"), ("--warmup-epochs", "-1", ">= 0"),
            ("--smoothing", "1.5", "[0, 1)"), ("--test-fraction", "0", "(0, 1)"),
            ("--test-fraction", "1", "(0, 1)"), ("--image-size", "0", ">= 1"),
            ("--std", "0", "> 0"), ("--seed", "-1", ">= 0"), ("--data", "MISSING", "no such folder"),
            ("--data", "FILE", "a file"), ("--out", "FILE", "a file")]
EVALUATE = [("--batch-size", "0", ">= 1"), ("--data", "FILE", "a file"), ("--knn", "0", ">= 1"),
            ("--test-fraction", "1", "(0, 1)"), ("--seed", "-2", ">= 0"),
            ("--std", "0", "> 0")]
PREDICT = [("--batch-size", "-3", ">= 1"), ("--top-k", "0", ">= 1"), ("--std", "0,1,1", "> 0"),
           ("--mean", "nan", "one number")]
EMBED = [("--batch-size", "0", ">= 1"), ("--std", "-1", "> 0")]
ATTENTION = [("--num-images", "0", ">= 1"), ("--data", "FILE", "a file")]
IO = [("--heads", "0", ">= 1"), ("--image-size", "-224", ">= 1")]

CASES = ([(train, [], *c) for c in TRAIN]
         + [(finetune, ["--model", "m.npz", "--data", "FOLDER"], *c) for c in FINETUNE]
         + [(evaluate, ["--model", "m.npz"], *c) for c in EVALUATE]
         + [(attention, ["--quick"], *c) for c in ATTENTION]
         + [(predict, ["--model", "m.npz", "a.png"], *c) for c in PREDICT]
         + [(embed, ["--model", "m.npz", "--out", "f.npz", "a.png"], *c) for c in EMBED]
         + [(io_cli, ["convert", "m.npz", "out", "--to", "hf"], *c) for c in IO]
         + [(io_cli, ["info", "m.npz"], "--heads", "-2", ">= 1")])


@pytest.mark.parametrize("command, base, flag, value, words", CASES,
                         ids=[f"{c[0].__name__.split('.')[-1]}{c[2]}={c[3]}" for c in CASES])
def test_a_bad_flag_value_stops_before_anything_is_made(tmp_path, monkeypatch, capsys, command,
                                                        base, flag, value, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not a folder")
    (tmp_path / "FOLDER").mkdir()
    monkeypatch.setattr(download, "_urlopen", None)       # a download attempt would fail
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as e:
        command.main(base + [flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"error: argument {flag}: takes " in err[0], err
    assert repr(value) in err[0] and words in err[0], err
    assert len(err) == 2 and "--help" in err[1]           # one line, and where the flags are
    assert sorted(os.listdir(tmp_path)) == before         # nothing created, nothing downloaded


# ---- output folders ------------------------------------------------------------------------

TINY = ["--procs", "1", "--model", "tiny", "--batch-size", "50", "--quiet", "--epochs", "1",
        "--workers", "1", "--limit-train", "100", "--limit-test", "50"]


@pytest.fixture
def mnist_dir(tmp_path, monkeypatch):
    from minivit.training import loop
    monkeypatch.setattr(loop, "plot_curves", lambda history, path: None)   # not what is tested
    return write_mnist(tmp_path / "mnist", monkeypatch, n_train=100, n_test=50)


def test_a_second_run_never_replaces_the_first(mnist_dir, tmp_path, capsys):
    out = str(tmp_path / "runs" / "mnist")
    first = train.main(TINY + ["--data", mnist_dir, "--out", out])
    assert first["out"] == out
    kept = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    capsys.readouterr()
    second = train.main(TINY + ["--data", mnist_dir, "--out", out, "--seed", "1"])
    assert second["out"] == out + "-2" and os.path.exists(os.path.join(out + "-2", "last.npz"))
    assert f"{out} holds an earlier run, so this one goes to {out}-2" in capsys.readouterr().err
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == kept
    third = train.main(TINY + ["--data", mnist_dir, "--out", out])
    assert third["out"] == out + "-3"                     # the first free number
    os.makedirs(str(tmp_path / "empty"))
    assert train.main(TINY + ["--data", mnist_dir, "--out", str(tmp_path / "empty")])["out"] \
        == str(tmp_path / "empty")                        # an empty folder is used as it is


def test_overwrite_writes_into_the_folder_and_resume_continues_it(mnist_dir, tmp_path):
    out = str(tmp_path / "run")
    train.main(TINY + ["--data", mnist_dir, "--out", out, "--epochs", "2",
                       "--stop-after-epochs", "1"])
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("mine")                                   # a user's own file is never touched
    resumed = train.main(TINY + ["--data", mnist_dir, "--out", out, "--epochs", "2",
                                 "--resume", os.path.join(out, "last.npz")])
    assert resumed["out"] == out and resumed["steps"] == 4
    lines = open(os.path.join(out, "metrics.jsonl")).read().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2]
    again = train.main(TINY + ["--data", mnist_dir, "--out", out, "--overwrite"])
    assert again["out"] == out and not os.path.exists(out + "-2")
    lines = open(os.path.join(out, "metrics.jsonl")).read().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1]  # the earlier run's files replaced
    assert open(os.path.join(out, "notes.txt")).read() == "mine"


def test_a_batch_larger_than_the_data_stops_before_the_folder_is_made(mnist_dir, tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit):
        run(train.main, TINY + ["--data", mnist_dir, "--out", out, "--batch-size", "500"])
    assert not os.path.exists(out)


def test_resume_names_the_flag_for_a_file_of_another_format(tmp_path, capsys):
    model = ViT(ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, num_classes=3))
    npz = str(tmp_path / "g.npz")
    from minivit.io.google import save_google_npz
    save_google_npz(model, npz)
    with pytest.raises(SystemExit) as e:
        run(train.main, ["--procs", "1", "--resume", npz, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Google" in err and f"minivit-finetune --model {npz}" in err
    assert not os.path.exists(tmp_path / "o")


# ---- io convert ----------------------------------------------------------------------------

@pytest.fixture
def checkpoint(tmp_path):
    path = str(tmp_path / "m.npz")
    save_checkpoint(path, ViT(ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2,
                                        num_classes=3)))
    return path


@pytest.mark.parametrize("dest, to, words", [
    ("m.npz", "minivit", "is the source"),
    ("m.npz/inner.npz", "minivit", "is the source"),
    ("out.npz", "hf", "writes a folder"),
    ("out", "google", "ending in .npz"),
    ("taken.npz", "minivit", "--overwrite")])
def test_convert_refuses_a_destination_it_would_damage(tmp_path, checkpoint, capsys, dest, to,
                                                       words):
    (tmp_path / "taken.npz").write_bytes(b"a user's file")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as e:
        run(io_cli.main, ["convert", checkpoint, str(tmp_path / dest), "--to", to])
    assert e.value.code == 2 and words in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / "taken.npz").read_bytes() == b"a user's file"


def test_convert_overwrite_leaves_no_file_of_the_earlier_layout(tmp_path, checkpoint):
    pytest.importorskip("safetensors")
    out = str(tmp_path / "out")
    io_cli.main(["convert", checkpoint, out, "--to", "hf"])
    (tmp_path / "out" / "preprocessor_config.json").write_text("{}")   # as an hf folder has
    with pytest.raises(ValueError, match="--overwrite"):
        io_cli.main(["convert", checkpoint, out, "--to", "timm"])
    io_cli.main(["convert", checkpoint, out, "--to", "timm", "--overwrite"])
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    from minivit.io.pretrained import load_pretrained
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    from minivit.io.checkpoint import load_checkpoint
    np.testing.assert_allclose(load_pretrained(out, heads=2).forward(x),
                               load_checkpoint(checkpoint)["model"].forward(x), atol=1e-6)


def test_attention_keeps_an_existing_png(tmp_path, capsys):
    png = tmp_path / "attention.png"
    png.write_bytes(b"a user's picture")
    with pytest.raises(SystemExit) as e:
        run(attention.main, ["--quick", "--out", str(png)])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert png.read_bytes() == b"a user's picture"
