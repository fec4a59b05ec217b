"""minivit-evaluate on an image folder: class folders matched to the model's class names (and
the error naming the ones it does not know), top-1 and top-5 against a direct computation, the
confusion matrix with an '(other)' column and its compact form, the train/test layouts, k-NN on
a model without a head against knn_predict on directly computed features, bad folders and bad
flags; MNIST stays the default. Every image is made here (.npy, and PNG with Pillow)."""
import json
import os
import sys

import numpy as np
import pytest

from minivit import Preprocessing, ViT, ViTConfig
from minivit.cli import evaluate, run
from minivit.data.batches import normalize
from minivit.data.photos import split_by_class
from minivit.embed import features
from minivit.io.checkpoint import save_checkpoint
from minivit.training.evaluate import match_classes, report
from minivit.training.knn import TEMPERATURE, knn_predict

from conftest import has, randomize_params

NAMES = ["tench, Tinca tinca", "tabby, tabby cat", "tiger cat", "coffee mug", "espresso",
         "space shuttle", "reflex camera"]
TINY = dict(image_size=8, patch_size=4, in_channels=3, num_classes=7, dim=16, depth=1, heads=2)


def save_model(path, seed=0, names=NAMES, **over) -> ViT:
    """A tiny RGB model with random parameters of std 0.3 (varied predictions), saved with its
    preprocessing; no resize, so 8x8 .npy images are read without Pillow."""
    model = ViT(ViTConfig(**{**TINY, **over}), seed=seed)
    randomize_params(model, seed)
    model.preprocessing = Preprocessing(mean=[0.5] * 3, std=[0.25] * 3, image_size=8,
                                        channels=3, class_names=names)
    save_checkpoint(str(path), model)
    return model


def make_classes(root, classes, n=4, seed=0, shift=None) -> dict:
    """root/<class>/<i>.npy, uint8 (8, 8, 3) images; shift[c] brightens class c (separable)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, c in enumerate(classes):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 120, (8, 8, 3))
            if shift is not None:
                img = img + shift[k]
            img = np.clip(img, 0, 255).astype(np.uint8)
            path = os.path.join(root, c, f"{i}.npy")
            np.save(path, img)
            out[path] = (c, img)
    return out


def logits(model, imgs) -> np.ndarray:
    x = normalize(np.moveaxis(np.stack(imgs), -1, 1), "float32", [0.5] * 3, [0.25] * 3)
    return model.forward(x).astype(np.float64)


def test_match_classes_by_name_loosely_by_synonym_and_by_index():
    assert match_classes(["tabby", "Tiger_Cat", "coffee-mug", "espresso"], NAMES, 7) == [1, 2, 3, 4]
    assert match_classes(["Tinca tinca"], NAMES, 7) == [0]
    with pytest.raises(ValueError) as e:
        match_classes(["tabby", "dog", "cofee mug"], NAMES, 7, "m.npz", "photos")
    msg = str(e.value)
    assert "2 of the 3 classes of photos are not among the 7 classes of m.npz: 'dog', " \
           "'cofee mug'" in msg and "did you mean 'coffee mug'" in msg and "Rename" in msg
    with pytest.raises(ValueError, match="'missile' matches outputs 0 .*, 1 "):
        match_classes(["missile"], ["missile, rocket", "projectile, missile"], 2)
    with pytest.raises(ValueError, match="'tabby' and 'Tabby' .* both stand for output 1"):
        match_classes(["tabby", "Tabby"], NAMES, 7)
    for names in (None, ["LABEL_0", "LABEL_1", "LABEL_2"], ["a", "b"]):   # no usable names
        assert match_classes(["2", "class 0", "class_1"], names, 3) == [2, 0, 1]
        with pytest.raises(ValueError, match="no class names .* 'cat', '3' are not an index "
                                             "0..2: name the class folders by output index"):
            match_classes(["0", "cat", "3"], names, 3)


def test_top1_top5_and_confusion_matrix_against_a_direct_computation(tmp_path, capsys):
    model = save_model(tmp_path / "m.npz", seed=2)
    folders = {"tabby": 1, "Coffee_Mug": 3, "space shuttle": 5}
    files = make_classes(tmp_path / "photos", folders, n=5, shift=[0, 60, 130])
    res = evaluate.main(["--model", str(tmp_path / "m.npz"), "--data", str(tmp_path / "photos"),
                         "--quiet"])
    out = capsys.readouterr().out
    paths = sorted(files)
    z = logits(model, [files[p][1] for p in paths])                     # (15, 7)
    target = np.array([folders[files[p][0]] for p in paths])
    order = np.argsort(-z, axis=1)
    top1, top5 = (order[:, 0] == target).mean(), (order[:, :5] == target[:, None]).any(1).mean()
    assert res["test_acc"] == pytest.approx(top1) and res["top5_acc"] == pytest.approx(top5)
    assert 0 < top1 < top5 < 1                                           # a test that can fail
    assert res["images"] == 15 and res["classes"] == 3 and res["skipped"] == 0
    assert json.loads(out.strip().splitlines()[-1]) == res
    rows = {c: [0] * 4 for c in folders}                                 # 3 classes + (other)
    cols = sorted(folders, key=str)                                      # the folder's order
    for p, o in zip(paths, order[:, 0]):
        c = files[p][0]
        rows[c][cols.index(next(k for k, v in folders.items() if v == o))
                if o in folders.values() else 3] += 1
    table = out[out.index("confusion matrix"):].splitlines()
    assert table[1].split() == ["Coffee_Mug", "space", "shuttle", "tabby", "(other)"]
    for line, c in zip(table[2:5], cols):
        assert [int(v) for v in line.split()[-4:]] == rows[c], (line, c)
    assert "top-5 accuracy" in out and "most confused" in out


def test_train_and_test_splits_and_the_mismatch_error(tmp_path, capsys, monkeypatch):
    save_model(tmp_path / "m.npz")
    make_classes(tmp_path / "d" / "train", ["tabby", "espresso"], n=3)
    make_classes(tmp_path / "d" / "test", ["tabby", "espresso"], n=2, seed=1)
    res = evaluate.main(["--model", str(tmp_path / "m.npz"), "--data", str(tmp_path / "d")])
    assert res["images"] == 4 and res["data"] == str(tmp_path / "d" / "test")
    capsys.readouterr()
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)
    make_classes(tmp_path / "bad", ["tabby", "dog", "cat"], n=1)
    with pytest.raises(SystemExit) as e:
        run(evaluate.main, ["--model", str(tmp_path / "m.npz"), "--data", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: 2 of the 3 classes of ")
    assert "are not among the 7 classes of " in err and "m.npz: 'cat', 'dog'; its classes" in err


def test_bad_folders_are_clear_errors(tmp_path):
    save_model(tmp_path / "m.npz")
    m = ["--model", str(tmp_path / "m.npz"), "--data"]
    (tmp_path / "loose").mkdir()
    np.save(tmp_path / "loose" / "a.npy", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="no class sub-folders .* move each image into"):
        evaluate.main(m + [str(tmp_path / "loose")])
    (tmp_path / "empty_class" / "tabby").mkdir(parents=True)
    (tmp_path / "empty_class" / "tabby" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="class folder .*tabby has no images"):
        evaluate.main(m + [str(tmp_path / "empty_class")])
    make_classes(tmp_path / "only_train" / "train", ["tabby"], n=1)
    with pytest.raises(ValueError, match="train/ split but no test/ one.*--data .*train"):
        evaluate.main(m + [str(tmp_path / "only_train")])
    with pytest.raises(ValueError, match="train/ split but no test/ one; --knn"):
        evaluate.main(m + [str(tmp_path / "only_train"), "--knn", "3"])
    make_classes(tmp_path / "ones", ["tabby", "espresso"], n=1)
    with pytest.raises(ValueError, match="no class has 2 images"):
        evaluate.main(m + [str(tmp_path / "ones"), "--knn"])
    with pytest.raises(ValueError, match="--knn fits on an image folder.*no such folder"):
        evaluate.main(m + [str(tmp_path / "missing"), "--knn"])


def test_knn_on_a_headless_model_against_knn_predict(tmp_path, capsys):
    model = save_model(tmp_path / "dino.npz", names=None, num_classes=0)
    files = make_classes(tmp_path / "d", ["a", "b", "c"], n=6, shift=[0, 70, 135])
    with pytest.raises(ValueError, match="no classifier head .* --knn K"):
        evaluate.main(["--model", str(tmp_path / "dino.npz"), "--data", str(tmp_path / "d")])
    res = evaluate.main(["--model", str(tmp_path / "dino.npz"), "--data", str(tmp_path / "d"),
                         "--knn", "4", "--test-fraction", "0.34", "--seed", "3", "--quiet"])
    out = capsys.readouterr().out
    labelled = [(p, "abc".index(files[p][0])) for p in sorted(files)]
    train, test = split_by_class(labelled, 0.34, 3)

    def feats(part):
        x = normalize(np.moveaxis(np.stack([files[p][1] for p, _ in part]), -1, 1), "float32",
                      [0.5] * 3, [0.25] * 3)
        return features(model, x)
    scores = knn_predict(feats(train), [y for _, y in train], feats(test), 4, TEMPERATURE, 3)
    y = np.array([y for _, y in test])
    assert res["test_acc"] == pytest.approx((scores.argmax(1) == y).mean())
    assert res["top5_acc"] == 1.0                                        # 3 classes: top-3
    assert (res["knn"], res["temperature"], res["images"], res["train_images"]) == \
        (4, 0.07, len(test), len(train)) == (4, 0.07, 6, 12)
    assert "k-NN (k=4, T=0.07)" in out and "top-3 accuracy" in out
    # train/ and test/ given: fitted on train, tested on test; k larger than train is capped
    make_classes(tmp_path / "s" / "train", ["a", "b"], n=2, shift=[0, 130])
    make_classes(tmp_path / "s" / "test", ["b"], n=3, seed=1, shift=[130])
    res = evaluate.main(["--model", str(tmp_path / "dino.npz"), "--data", str(tmp_path / "s"),
                         "--knn"])
    assert (res["knn"], res["train_images"], res["images"]) == (4, 4, 3)
    assert "note: --knn 20 is more than the 4 training images" in capsys.readouterr().err


def test_flags_skips_and_exit_status(tmp_path, capsys, monkeypatch):
    p = evaluate.build_parser()
    assert p.parse_args(["--model", "m", "--knn"]).knn == 20
    assert p.parse_args(["--model", "m", "--knn", "7"]).knn == 7
    assert p.parse_args(["--model", "m"]).knn is None
    for flag, value, words in (("--knn", "0", ">= 1"), ("--knn", "x", ">= 1"),
                               ("--test-fraction", "1", "(0, 1)"), ("--seed", "-1", ">= 0"),
                               ("--std", "0", "> 0")):
        with pytest.raises(SystemExit) as e:
            evaluate.main(["--model", "m", flag, value])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument {flag}: takes" in err and words in err, err
    save_model(tmp_path / "m.npz")
    make_classes(tmp_path / "d", ["tabby", "espresso"], n=2)
    (tmp_path / "d" / "tabby" / "broken.npy").write_bytes(b"\x93NUMPY nope")
    monkeypatch.setattr(sys, "argv", ["minivit-evaluate", "--model", str(tmp_path / "m.npz"),
                                      "--data", str(tmp_path / "d")])
    with pytest.raises(SystemExit) as e:
        evaluate.entry()
    captured = capsys.readouterr()
    assert e.value.code == 1 and "broken.npy" in captured.err
    assert json.loads(captured.out.splitlines()[-1])["skipped"] == 1


@pytest.mark.skipif(not has("PIL"), reason="needs PIL (pip install -e .[images])")
def test_photos_of_any_size_get_the_models_resize_and_crop(tmp_path):
    from PIL import Image
    model = ViT(ViTConfig(**TINY), seed=1)
    model.preprocessing = Preprocessing(mean=[0.5] * 3, std=[0.25] * 3, image_size=8,
                                        channels=3, class_names=NAMES, resize_size=10,
                                        resize_mode="shortest", center_crop=True)
    save_checkpoint(str(tmp_path / "m.npz"), model)
    rng = np.random.default_rng(0)
    for c, shape in (("tabby", (30, 20, 3)), ("espresso", (12, 40))):    # a gray one too
        (tmp_path / "d" / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(
            tmp_path / "d" / c / "x.png")
    res = evaluate.main(["--model", str(tmp_path / "m.npz"), "--data", str(tmp_path / "d")])
    assert res["images"] == 2 and res["skipped"] == 0


def test_compact_report_for_many_classes():
    rng = np.random.default_rng(0)
    n = 30
    cm = np.diag(rng.integers(5, 9, n))
    cm[3, 7] = 6                                                          # the worst confusion
    text = report(cm, [f"class {i}" for i in range(n)])
    assert "confusion matrix" not in text and f", {n} classes" in text
    assert "worst first" in text and "most confused" in text
    assert text.splitlines()[2].lstrip().startswith("class 3: ")         # the worst class first
    assert "  class 3 -> class 7: 6 (" in text
    assert max(len(line) for line in text.splitlines()) <= 104


def test_mnist_stays_the_default(tmp_path, monkeypatch, capsys):
    from conftest import write_mnist
    folder = write_mnist(tmp_path / "mnist", monkeypatch, n_train=10, n_test=30, offline=False)
    assert evaluate.is_mnist_folder(None) and evaluate.is_mnist_folder(str(folder))
    assert evaluate.is_mnist_folder(str(tmp_path / "new")) and not evaluate.is_mnist_folder(
        str(tmp_path))
    model = ViT(ViTConfig(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=16,
                          depth=1, heads=2), seed=0)
    save_checkpoint(str(tmp_path / "mnist.npz"), model)
    res = evaluate.main(["--model", str(tmp_path / "mnist.npz"), "--data", str(folder)])
    assert sorted(res) == ["images", "test_acc"] and res["images"] == 30
    save_model(tmp_path / "rgb.npz")
    with pytest.raises(ValueError, match="MNIST is 28x28x1 with 10; use a model trained on "
                                         "MNIST; to evaluate it on your own images, pass --data"):
        evaluate.main(["--model", str(tmp_path / "rgb.npz"), "--data", str(folder)])
