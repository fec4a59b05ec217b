"""One source flag: predict, evaluate, finetune and attention take --model PATH in any layout
load_pretrained reads (minivit checkpoint, Google .npz, transformers or timm folder), and
--checkpoint, --npz and --pretrained are the same flag."""
import os

import numpy as np
import pytest

from minivit import Preprocessing, ViT, ViTConfig
from minivit.cli import attention, evaluate, finetune, predict
from minivit.io import save_checkpoint, save_google_npz, save_pretrained

from conftest import has, needs, write_mnist

ALIASES = ("--model", "--checkpoint", "--npz", "--pretrained")
MNIST = dict(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=16, depth=1,
             heads=2, mlp_ratio=2.0)


@pytest.mark.parametrize("command, rest", [(predict, ["x.npy"]), (evaluate, []),
                                           (finetune, ["--data", "."]), (attention, [])])
def test_model_and_its_aliases_are_one_flag(command, rest):
    for flag in ALIASES:
        assert command.build_parser().parse_args([flag, "m.npz", *rest]).model == "m.npz"
    if command is attention:                               # optional: --quick needs none
        assert command.build_parser().parse_args(rest).model is None
    else:
        with pytest.raises(SystemExit):
            command.build_parser().parse_args(rest)


def mnist_model(seed=3) -> ViT:
    """A random 28x28x1 model with a larger head (logits of std ~1), tanh GELU and eps 1e-6 (so
    the Google layout holds it exactly), normalized as Google's files are: mean = std = 0.5."""
    model = ViT(ViTConfig(**MNIST), seed=seed)
    model.params["head.w"][...] = np.random.default_rng(seed).standard_normal((16, 10)) * 0.25
    model.preprocessing = Preprocessing(mean=[0.5], std=[0.5], image_size=28, channels=1,
                                        class_names=[str(k) for k in range(10)])
    return model


def sources(tmp_path, model) -> dict:
    """The model written in every layout --model reads: {format: path}."""
    out = {"minivit": str(tmp_path / "c.npz"), "google": str(tmp_path / "g.npz")}
    save_checkpoint(out["minivit"], model)
    save_google_npz(model, out["google"])
    if has("safetensors"):
        for fmt in ("hf", "timm"):
            out[fmt] = str(tmp_path / fmt)
            save_pretrained(model, out[fmt], format=fmt)
    return out


def test_predict_reads_every_layout_with_each_flag(tmp_path, capsys):
    model = mnist_model()
    img = str(tmp_path / "x.npy")
    np.save(img, np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8))
    want = None
    for fmt, path in sources(tmp_path, model).items():
        for flag in ALIASES:
            res = predict.main([flag, path, "--top-k", "10", img])
            probs = sorted(res[0]["top"], key=lambda t: t["index"])
            got = np.array([t["prob"] for t in probs])
            want = got if want is None else want
            assert np.allclose(got, want, atol=1e-5), (fmt, flag)
            names = [t["class"] for t in probs]
            assert names == [str(k) for k in range(10)], fmt   # Google: from its sidecar
    with pytest.raises(ValueError, match="minivit checkpoint, which records its own"):
        predict.main(["--model", str(tmp_path / "c.npz"), "--gelu", "erf", img])
    g = predict.main(["--model", str(tmp_path / "g.npz"), "--gelu", "erf", "--top-k", "10", img])
    assert g[0]["top"] != res[0]["top"]                   # --gelu reached the Google model


@pytest.fixture
def mnist_dir(tmp_path, monkeypatch):
    return write_mnist(tmp_path / "mnist", monkeypatch, n_train=20, n_test=50, offline=False)


def test_evaluate_reads_every_layout_with_each_flag(tmp_path, mnist_dir, capsys):
    model = mnist_model()
    results = {(fmt, flag): evaluate.main([flag, path, "--data", mnist_dir])
               for fmt, path in sources(tmp_path, model).items() for flag in ("--model",
                                                                              "--checkpoint")}
    assert len({r["test_acc"] for r in results.values()}) == 1     # the same model, read 4 ways
    assert all(r["images"] == 50 for r in results.values())
    wide = ViT(ViTConfig(**{**MNIST, "in_channels": 3}))
    save_checkpoint(str(tmp_path / "rgb.npz"), wide)
    with pytest.raises(ValueError, match="28x28x3 images with 10 classes, MNIST is 28x28x1"):
        evaluate.main(["--model", str(tmp_path / "rgb.npz"), "--data", mnist_dir])


def test_attention_model_flag_and_alias(tmp_path, capsys):
    model = mnist_model()
    paths = sources(tmp_path, model)
    maps = [attention.main([flag, paths[fmt], "--quick", "--out",
                            str(tmp_path / f"{flag[2:]}-{fmt}.png")])
            for flag, fmt in (("--model", "minivit"), ("--checkpoint", "minivit"),
                              ("--model", "google"))]
    for m in maps[1:]:
        assert np.allclose(m["rollout"], maps[0]["rollout"], atol=1e-6)
    with pytest.raises(ValueError, match=r"pass --model PATH .*; or --quick"):
        attention.main(["--out", str(tmp_path / "a.png")])


@needs("safetensors")
def test_finetune_model_flag_normalizes_as_the_source_says(tmp_path, capsys):
    """--model on a transformers folder: the source's mean and std; on a Google .npz (or a
    minivit checkpoint): the training images' statistics, as --npz and --checkpoint did."""
    from conftest import make_folder
    from minivit.data.imagefolder import channel_stats, load_image_folder
    from minivit.io import load_checkpoint
    model = ViT(ViTConfig(**{**MNIST, "image_size": 8, "patch_size": 4}), seed=2)
    model.preprocessing = Preprocessing(mean=[0.5], std=[0.25], image_size=8, channels=1)
    save_pretrained(model, tmp_path / "hf", format="hf")
    save_google_npz(model, tmp_path / "g.npz")
    data = make_folder(tmp_path / "imgs", classes=("p", "q"), n=8, size=8)
    stats = channel_stats(load_image_folder(data).x_train)[0]
    for src, mean in (("hf", [0.5]), ("g.npz", pytest.approx(stats))):
        out = str(tmp_path / f"run-{src}")
        finetune.main(["--model", str(tmp_path / src), "--data", data, "--epochs", "1",
                       "--batch-size", "6", "--quiet", "--out", out])
        pre = load_checkpoint(os.path.join(out, "last.npz"))["preprocessing"]
        assert pre.mean == mean and pre.class_names == ["p", "q"], src
