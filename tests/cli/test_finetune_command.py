"""The fine-tuning command end to end: from a Google .npz (head only), from a minivit
checkpoint (all parameters) and from a transformers folder (--model, or its aliases --npz,
--checkpoint and --pretrained)."""
import json
import os
import pathlib

import numpy as np
import pytest

from minivit import ViT, ViTConfig
from minivit.cli import finetune as finetune_cli
from minivit.cli import predict
from minivit.data.imagefolder import (channel_stats, load_image_folder)
from minivit.io import google as io
from minivit.io.checkpoint import load_checkpoint, save_checkpoint

from conftest import has, load_example, make_folder, needs

TINY = dict(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=1, heads=2)


def test_finetune_head_only_from_google_npz(tmp_path, capsys):
    src = ViT(ViTConfig(**{**TINY, "num_classes": 5}), seed=1)
    npz = str(tmp_path / "pre.npz")
    io.save_google_npz(src, npz)
    data = make_folder(tmp_path / "imgs", classes=("c0", "c1", "c2"), n=12, size=12)
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"12x12 but the model takes 8x8.*--image-size"):
        finetune_cli.main(["--npz", npz, "--data", data, "--out", out, "--quiet"])
    capsys.readouterr()
    summary = finetune_cli.main(["--model", npz, "--data", data, "--image-size", "12",
                                 "--head-only", "--epochs", "2", "--batch-size", "9", "--lr",
                                 "0.05", "--warmup-epochs", "0", "--no-augment", "--quiet",
                                 "--out", out])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    assert summary["classes"] == 3 and summary["head_only"] and summary["epochs"] == 2
    for name in ("last.npz", "best.npz", "metrics.jsonl", "config.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert os.path.exists(os.path.join(out, "curves.png")) == has("matplotlib")
    meta = load_checkpoint(os.path.join(out, "last.npz"))
    tuned, ref = meta["model"], io.load_google_npz(npz, image_size=12)  # pos table resampled too
    assert tuned.config.num_classes == 3 and tuned.config.image_size == 12
    frozen = [k for k in ref.params if not k.startswith("head.")]
    assert frozen and all(np.array_equal(tuned.params[k], ref.params[k]) for k in frozen)
    assert tuned.params["head.w"].shape == (16, 3) and np.abs(tuned.params["head.w"]).max() > 0
    pre = meta["preprocessing"]
    assert pre.class_names == ["c0", "c1", "c2"] and pre.channels == 1
    assert pre.mean == pytest.approx(channel_stats(load_image_folder(data).x_train)[0])
    cfg = json.loads(pathlib.Path(out, "config.json").read_text())
    assert sorted(cfg["train"]["frozen"]) == sorted(frozen)
    img = os.path.join(data, "c1", "0.npy")
    res = predict.main(["--checkpoint", os.path.join(out, "best.npz"), "--top-k", "2", img])
    assert res[0]["top"][0]["class"] in ("c0", "c1", "c2")


def test_finetune_all_params_from_checkpoint(tmp_path, capsys):
    model = ViT(ViTConfig(**TINY), seed=2)
    ckpt = str(tmp_path / "pre.npz")
    save_checkpoint(ckpt, model)
    data = make_folder(tmp_path / "imgs", classes=("p", "q"), n=8, size=8)
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match="minivit checkpoint, which records its own"):
        finetune_cli.main(["--checkpoint", ckpt, "--data", data, "--gelu", "erf"])
    finetune_cli.main(["--checkpoint", ckpt, "--data", data, "--epochs", "1", "--batch-size", "6",
                       "--quiet", "--out", out])
    tuned = load_checkpoint(os.path.join(out, "last.npz"))["model"]
    assert tuned.config.num_classes == 2
    assert not np.array_equal(tuned.params["blocks.0.attn.qkv.w"], model.params["blocks.0.attn.qkv.w"])
    assert load_example("finetune").main is finetune_cli.main          # the example is thin


@needs("safetensors")
def test_finetune_from_a_pretrained_hf_folder(tmp_path, capsys):
    """--pretrained: a Hugging Face folder (here minivit's own hf export) is the source; its
    preprocessing's mean and std normalize the folder's images unless --mean/--std say otherwise."""
    from minivit import Preprocessing
    from minivit.io import save_pretrained
    model = ViT(ViTConfig(**TINY), seed=2)
    model.preprocessing = Preprocessing(mean=[0.5], std=[0.25], image_size=8, channels=1)
    save_pretrained(model, str(tmp_path / "hf"), format="hf")
    data = make_folder(tmp_path / "imgs", classes=("p", "q"), n=8, size=8)
    out = str(tmp_path / "run")
    summary = finetune_cli.main(["--pretrained", str(tmp_path / "hf"), "--data", data,
                                 "--epochs", "1", "--batch-size", "6", "--quiet", "--out", out])
    assert summary["classes"] == 2
    pre = load_checkpoint(os.path.join(out, "last.npz"))["preprocessing"]
    assert pre.mean == [0.5] and pre.std == [0.25] and pre.class_names == ["p", "q"]


def test_finetune_ctrl_c_then_resume_is_exact(tmp_path, monkeypatch, capsys):
    """Ctrl-C mid-epoch saves last.npz and says to add --resume; the same command plus --resume
    ends with the parameters and metrics of an uninterrupted run, in the interrupted run's
    folder (here a numbered one: the default-named folder held an earlier run)."""
    import signal

    from minivit import optim
    ckpt = str(tmp_path / "pre.npz")
    save_checkpoint(ckpt, ViT(ViTConfig(**TINY), seed=2))
    data = make_folder(tmp_path / "imgs", classes=("a", "b", "c"), n=12, size=8)
    out = str(tmp_path / "run")
    args = ["--model", ckpt, "--data", data, "--epochs", "2", "--batch-size", "3", "--quiet",
            "--out", out]
    from minivit.training import loop
    monkeypatch.setattr(loop, "plot_curves", lambda history, path: None)   # not what is tested
    straight = finetune_cli.main(args)["out"]
    assert straight == out
    real_step, calls = optim.AdamW.step, {"n": 0}

    def interrupt(self, grads, lr=None):
        calls["n"] += 1
        if calls["n"] == 5:                               # epoch 2 of 3 steps per epoch
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, grads, lr)
    monkeypatch.setattr(optim.AdamW, "step", interrupt)
    with pytest.raises(SystemExit) as e:
        finetune_cli.main(args)                           # goes to run-2: run holds the first
    assert e.value.code == 130
    last = os.path.join(out + "-2", "last.npz")
    assert f"--resume {last}" in capsys.readouterr().err
    monkeypatch.setattr(optim.AdamW, "step", real_step)
    resumed = finetune_cli.main(args + ["--resume", last])
    assert resumed["out"] == out + "-2" and resumed["steps"] == straight_steps(out)
    a = load_checkpoint(os.path.join(out, "last.npz"))["model"].params
    b = load_checkpoint(last)["model"].params
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    lines = [pathlib.Path(o, "metrics.jsonl").read_text().splitlines() for o in (out, out + "-2")]
    exact = ("epoch", "step", "train_loss", "train_acc", "test_acc")
    assert [{k: json.loads(l)[k] for k in exact} for l in lines[0]] == \
        [{k: json.loads(l)[k] for k in exact} for l in lines[1]]


def straight_steps(out):
    return json.loads(pathlib.Path(out, "metrics.jsonl").read_text().splitlines()[-1])["step"]


def test_augmentation_is_crop_flip_for_photos_and_shift_for_gray():
    rgb, gray = ViT(ViTConfig(**{**TINY, "in_channels": 3})), ViT(ViTConfig(**TINY))
    assert finetune_cli.augmentation("auto", rgb) == "crop-flip"
    assert finetune_cli.augmentation("auto", gray) == "shift"
    assert finetune_cli.augmentation("none", rgb) is False
    assert finetune_cli.build_parser().parse_args(
        ["--model", "m", "--data", ".", "--no-augment"]).augment == "none"


@needs("PIL")                                             # the source's resize is Pillow's
def test_finetune_photos_of_any_size_through_the_sources_preprocessing(tmp_path, monkeypatch,
                                                                       capsys):
    """A source whose preprocessing resizes and center-crops (as transformers and timm folders
    state) takes a folder of photos of mixed sizes with no --image-size; the fine-tuned
    checkpoint keeps that resize and crop with the folder's class names, so predict needs no
    flags on it, and prepares an odd-sized photo exactly as the source would."""
    from minivit import Preprocessing
    from minivit.data.photos import fit_image, read_photo
    from minivit.training import loop
    monkeypatch.setattr(loop, "plot_curves", lambda history, path: None)
    pre = Preprocessing(mean=[0.5] * 3, std=[0.25] * 3, image_size=8, channels=3, resize_size=10,
                        resize_mode="shortest", center_crop=True, class_names=["x", "y"])
    src = ViT(ViTConfig(**{**TINY, "in_channels": 3, "num_classes": 2}), seed=4,
              preprocessing=pre)
    ckpt = str(tmp_path / "src.npz")
    save_checkpoint(ckpt, src)
    rng = np.random.default_rng(0)
    for k, c in enumerate(("cat", "dog")):
        os.makedirs(tmp_path / "photos" / c)
        for i, (h, w) in enumerate([(12, 16), (9, 9), (20, 11), (10, 14)]):
            img = rng.integers(0, 60, (3, h, w)).astype(np.uint8)
            img[k] += 150                                 # the class is the bright channel
            np.save(tmp_path / "photos" / c / f"{i}.npy", img)
    out = str(tmp_path / "run")
    finetune_cli.main(["--model", ckpt, "--data", str(tmp_path / "photos"), "--epochs", "1",
                       "--batch-size", "2", "--quiet", "--out", out])
    tuned = load_checkpoint(os.path.join(out, "last.npz"))
    kept = tuned["preprocessing"]
    assert (kept.resize_size, kept.resize_mode, kept.center_crop) == (10, "shortest", True)
    assert kept.class_names == ["cat", "dog"] and kept.mean == [0.5] * 3 and kept.std == [0.25] * 3
    photo = str(tmp_path / "photos" / "dog" / "2.npy")
    capsys.readouterr()
    res = predict.main(["--model", os.path.join(out, "last.npz"), photo])
    x = fit_image(read_photo(photo), photo, 8, 3, pre, False)            # (3, 8, 8)
    from minivit.data.batches import normalize
    logits = tuned["model"].forward(normalize(x[None], "float32", pre.mean, pre.std))
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert res[0]["top"][0]["label"] == ["cat", "dog"][int(p.argmax())]
    assert res[0]["top"][0]["prob"] == pytest.approx(float(p.max()), rel=1e-5)


@needs("PIL")
def test_the_digit_photo_recipe_writes_a_folder_finetune_and_evaluate_read(tmp_path,
                                                                           monkeypatch):
    """examples/make_digit_photos.py (the recipe in docs/training.md) writes train/ and test/
    class folders of dark-on-light RGB photos of assorted sizes, from MNIST (here a synthetic
    one), and refuses a folder that exists."""
    from minivit.data.photos import read_photo
    from conftest import write_mnist
    folder = write_mnist(tmp_path / "mnist", monkeypatch, n_train=200, n_test=100)
    make = load_example("make_digit_photos")
    out = tmp_path / "photos"
    make.main([str(out), "--train-per-class", "3", "--test-per-class", "2", "--data", str(folder)])
    assert sorted(os.listdir(out)) == ["test", "train"]
    assert sorted(os.listdir(out / "train")) == [str(k) for k in range(10)]
    files = sorted((out / "train" / "4").iterdir())
    assert len(files) == 3 and len(list((out / "test" / "4").iterdir())) == 2
    for f in files:
        img = read_photo(str(f))                           # (3, S, S) uint8
        assert img.shape[0] == 3 and 24 <= img.shape[1] == img.shape[2] <= 64
        assert img.mean() > 128                            # light paper, dark ink
    with pytest.raises(ValueError, match="exists"):
        make.main([str(out), "--data", str(folder)])
