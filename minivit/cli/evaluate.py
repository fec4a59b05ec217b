"""Evaluate a model (minivit-evaluate, or python -m minivit.evaluate): on the MNIST test set, or
on a folder of your own images, by its classifier or by k-nearest neighbours on its features.

    minivit-evaluate --model runs/mnist/best.npz [--data MNIST_DIR] [--batch-size 500]
    minivit-evaluate --model vit-base-patch16-224/ --data photos/           # photos/<class>/...
    minivit-evaluate --model dinov2-small/ --data photos/ --knn 20           # no head needed

--model takes anything minivit.io.load_pretrained reads (--checkpoint, its old name, is the
same flag).

MNIST (no --data, or --data naming a folder that holds the MNIST files, is empty or does not
exist yet): the model must take 28x28x1 images and have 10 classes; normalization and class
names come from its Preprocessing (MNIST's for a checkpoint that records none). Prints
accuracy, per-class accuracy and the confusion matrix, then one JSON line
{"test_acc", "images"}.

An image folder (--data DIR, any other folder): DIR/<class>/<images> (read recursively, every
format Pillow reads and .npy, as minivit-predict reads a folder), or DIR/test/<class>/ (with
DIR/train/ beside it, the test split is evaluated). Each image gets the model's own
preprocessing (resize, center crop, channels, mean/std; minivit/data/photos.py fit_image).
  * classifier: each class folder is matched to one of the model's outputs by its class name
    (training.evaluate.match_classes: exact, then ignoring case, '_' and '-', then one of a
    name's comma-separated synonyms, so 'tabby' finds ImageNet's 'tabby, tabby cat'); folder
    classes the model does not know are an error naming them. A model without class names is
    matched by index only when the folders are named 0..K-1 (or 'class i'). The folder may
    hold a few of the model's classes: top-1 and top-5 are over all of the model's outputs,
    and the confusion matrix has an '(other)' column for predictions outside the folder's
    classes; past 20 classes it is printed compactly (per-class accuracy, most confused
    pairs). A model without a head (DINOv2) needs --knn.
  * --knn K (K = 20 when the flag has no value): k-NN classification on the model's features
    (minivit.embed.features, the representation its head reads; no head needed), fitted on
    DIR/train/<class>/ and tested on DIR/test/<class>/, or, for a folder of classes without
    that split, on a seeded per-class split (--test-fraction of each class held out, --seed):
    cosine similarity of L2-normalized features, the K nearest training images vote with
    weight exp(similarity / 0.07), as DINO evaluates (Caron et al. 2021; Wu et al. 2018;
    minivit/training/knn.py). The class names are the folder's.
The output ends with one JSON line: {"data", "test_acc" (top-1), "top5_acc" (top-5; with
fewer than 5 classes, top-K), "images", "classes", "skipped"} (and "knn", "temperature",
"train_images" for --knn). An image that cannot be read is reported and left out (exit status
1, as minivit-predict); a progress bar on stderr shows when stderr is a terminal (--quiet:
none).
"""
from __future__ import annotations

import json
import os
import types

import numpy as np

from ..data.mnist import MNIST_FILES, PREPROCESSING, load_mnist
from ..errors import UserError
from ..training.evaluate import confusion_matrix, predict, report
from . import Parser, add_device_args, add_model_arg, command_name, load_model, run, use_device
from .flags import count, folder, natural, open_fraction

MNIST_BATCH = 500
PHOTO_BATCH = 32


def build_parser() -> Parser:
    from ..training.knn import DEFAULT_K
    from .predict import numbers, positive_numbers
    ap = Parser(prog=command_name("minivit-evaluate"),
                description="Evaluate a model on the MNIST test set (the default), or on a "
                            "folder of images, one sub-folder per class (--data DIR): by its "
                            "classifier, or by k-NN on its features (--knn).")
    add_model_arg(ap, help="; on MNIST it must take 28x28x1 images and have 10 classes; on an "
                           "image folder any model, with its own preprocessing")
    ap.add_argument("--data", type=folder, default=None, metavar="DIR",
                    help="an image folder, DIR/<class>/<image> or DIR/train|test/<class>/ "
                         "(the test split is evaluated); a folder holding the MNIST files "
                         "(default: the MNIST cache) evaluates on MNIST's test set")
    ap.add_argument("--knn", type=count, nargs="?", const=DEFAULT_K, default=None, metavar="K",
                    help=f"k-nearest-neighbour accuracy on the model's features instead of its "
                         f"head (a model without one works): fitted on DIR/train (or a "
                         f"--test-fraction split of DIR/<class>/), tested on the rest; K "
                         f"neighbours (default {DEFAULT_K}), votes weighted exp(cos / 0.07)")
    ap.add_argument("--test-fraction", type=open_fraction, default=0.2,
                    help="--knn on DIR/<class>/ (no train/test split): the share of each class "
                         "held out for testing (default 0.2)")
    ap.add_argument("--seed", type=natural, default=0, help="seed of that split (default 0)")
    ap.add_argument("--batch-size", type=count, default=None,
                    help=f"images per forward pass (default {MNIST_BATCH} on MNIST, "
                         f"{PHOTO_BATCH} on an image folder)")
    ap.add_argument("--resize", action="store_true",
                    help="resize images to the model's size (bilinear) when its preprocessing "
                         "has no resize of its own (a minivit checkpoint), instead of skipping "
                         "them")
    ap.add_argument("--mean", type=numbers, default=None, metavar="M[,M,M]",
                    help="image folder: override the model's normalization mean of pixel/255 "
                         "(one number, or one per channel separated by commas)")
    ap.add_argument("--std", type=positive_numbers, default=None, metavar="S[,S,S]",
                    help="see --mean; each > 0")
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    add_device_args(ap, workers=False)
    return ap


def check_mnist_model(model, path: str, hint: str = "") -> None:
    """ValueError unless the model takes MNIST's 28x28x1 images and has 10 outputs."""
    cfg = model.config
    if (cfg.image_size, cfg.in_channels, cfg.num_classes) != (28, 1, 10):
        raise UserError(f"{path} takes {cfg.image_size}x{cfg.image_size}x{cfg.in_channels} "
                        f"images with {cfg.num_classes} classes, MNIST is 28x28x1 with 10; "
                        f"use a model trained on MNIST{hint}")


def is_mnist_folder(path) -> bool:
    """Whether --data means MNIST, as it did before image folders: not given (the MNIST
    cache), a folder that does not exist yet or is empty (MNIST is downloaded into it), or one
    that holds one of MNIST's four files (NAME or NAME.gz). Any other folder is an image
    folder."""
    if path is None or not os.path.isdir(path):
        return True
    entries = [e for e in os.listdir(path) if not e.startswith(".")]
    return not entries or any(n in entries or n + ".gz" in entries for n in MNIST_FILES)


def main(argv=None) -> dict:
    """Evaluate and print; return the JSON line's dict."""
    args = build_parser().parse_args(argv)
    if is_mnist_folder(args.data):
        if args.knn is not None:
            missing = args.data is not None and not os.path.exists(args.data)
            raise UserError("--knn fits on an image folder's training images: pass --data "
                            "DIR with DIR/train/<class>/ and DIR/test/<class>/, or "
                            "DIR/<class>/ to split" + (f" (--data {args.data}: no such folder)"
                                                        if missing else ""))
        return evaluate_mnist(args)
    plan = knn_plan(args) if args.knn is not None else folder_plan(args)
    model, _ = load_model(args.model, runtime=use_device(args))
    return evaluate_knn(model, args, plan) if args.knn is not None else \
        evaluate_folder(model, args, plan)


# ---- MNIST --------------------------------------------------------------------------------------
def evaluate_mnist(args) -> dict:
    """The MNIST test set, as minivit-evaluate always did."""
    model, _ = load_model(args.model, runtime=use_device(args))
    missing = args.data is not None and not os.path.exists(args.data)
    hint = (f"; --data {args.data} does not exist: for your own images give an existing folder "
            f"of class sub-folders" if missing else
            "; to evaluate it on your own images, pass --data DIR (DIR/<class>/<image>)")
    check_mnist_model(model, args.model, hint)
    _, _, x_test, y_test = load_mnist(args.data)
    pre = model.preprocessing or PREPROCESSING            # checkpoints without one: MNIST's
    preds = predict(model, x_test, args.batch_size or MNIST_BATCH, pre.mean, pre.std)
    cm = confusion_matrix(y_test, preds, model.config.num_classes)
    print(report(cm, pre.class_names))
    result = {"test_acc": float(cm.diagonal().sum() / cm.sum()), "images": int(cm.sum())}
    print(json.dumps(result))
    return result


# ---- an image folder --------------------------------------------------------------------------
def folder_plan(args) -> dict:
    """The images to evaluate the classifier on: {'where', 'names', 'files'} of DIR/test/
    (when DIR has a test split) or DIR; checked before the model is read."""
    from ..data.photos import class_folder, folder_splits
    train_dir, test_dir = folder_splits(args.data)
    if train_dir is not None and test_dir is None:
        raise UserError(f"{args.data} has a train/ split but no test/ one; a model is "
                        f"evaluated on images it was not trained on: add "
                        f"{os.path.join(args.data, 'test', '<class>')}/, or pass --data "
                        f"{train_dir} to evaluate on the training images")
    where = test_dir or args.data
    names, files = class_folder(where)
    return {"where": where, "names": names, "files": files}


def knn_plan(args) -> dict:
    """The k-NN's training and test images: {'where', 'names', 'files', 'is_test',
    'split'}: DIR/train and DIR/test, or a seeded --test-fraction split of DIR/<class>/."""
    from ..data.imagefolder import split_classes
    from ..data.photos import class_folder, folder_splits
    root = args.data
    train_dir, test_dir = folder_splits(root)
    if (train_dir is None) != (test_dir is None):
        have, lack = ("train", "test") if train_dir else ("test", "train")
        raise UserError(f"{root} has a {have}/ split but no {lack}/ one; --knn fits on "
                        f"{os.path.join(root, 'train', '<class>')}/ and tests on "
                        f"{os.path.join(root, 'test', '<class>')}/: add the {lack}/ folder, "
                        f"or give a folder of classes, {os.path.join(root, '<class>')}/, to "
                        f"split by --test-fraction")
    names, train, test = split_classes(root, train_dir, test_dir,
                                       lambda d, test=False: class_folder(d),
                                       args.test_fraction, args.seed)
    split = (f"{train_dir} (train), {test_dir} (test)" if train_dir is not None else
             f"{root}, split per class: {args.test_fraction:g} held out for testing "
             f"(seed {args.seed})")
    return {"where": root, "names": names, "files": train + test,
            "is_test": [False] * len(train) + [True] * len(test), "split": split}


def read_folder(model, args, files: list, verb: str, fn) -> tuple:
    """Run fn(uint8 batch (b, C, S, S)) -> (b, ...) over the images of files [(path, label)]
    with the model's preprocessing, through minivit-predict's ImageRun (skipped files reported,
    progress bar, channel notes). (indices of the files used, fn's outputs concatenated,
    ImageRun); a ValueError when no image could be used."""
    from .predict import ImageRun
    shim = types.SimpleNamespace(images=[p for p, _ in files], quiet=args.quiet,
                                 resize=args.resize, batch_size=args.batch_size or PHOTO_BATCH)
    images = ImageRun(shim, verb)
    index = {p: i for i, (p, _) in enumerate(files)}
    used, outs = [], []
    for paths, batch in images.batches(model):
        used += [index[p] for p in paths]
        outs.append(fn(batch))
    if not used:
        raise UserError(f"none of the {len(files)} images could be used (reasons above); fix "
                        f"or remove them" + ("" if args.resize else
                                              ", or pass --resize if they are of another size"))
    return np.array(used, dtype=np.int64), np.concatenate(outs), images


def evaluate_folder(model, args, plan: dict) -> dict:
    """Top-1 and top-5 accuracy and the confusion matrix of the model's classifier on the
    plan's images, its outputs matched to the folder's classes by name."""
    from ..training.evaluate import logits_of, match_classes, model_class_names
    from .predict import normalization
    K = model.config.num_classes
    if not K:
        raise UserError(f"{args.model} has no classifier head (a feature extractor such as "
                        f"DINOv2); evaluate its features with --knn K (k-nearest neighbours "
                        f"fitted on the folder's training images)")
    pre = model.preprocessing
    model_names = pre.class_names if pre is not None else None
    where, names = plan["where"], plan["names"]
    outputs = np.array(match_classes(names, model_names, K, args.model, where))      # (n,)
    mean, std = normalization(model, args, args.model)
    k5 = min(5, K)

    def top(batch):
        logits = logits_of(model, batch, len(batch), mean, std)                     # (b, K)
        return np.argsort(-logits, axis=1, kind="stable")[:, :k5]                   # (b, k5)

    used, tops, images = read_folder(model, args, plan["files"], "evaluate", top)
    y = np.array([plan["files"][i][1] for i in used], dtype=np.int64)               # (M,)
    target = outputs[y]                                                               # (M,)
    top1 = float((tops[:, 0] == target).mean())
    top5 = float((tops == target[:, None]).any(1).mean())
    cm = np.zeros((len(names), K), dtype=np.int64)                                   # (n, K)
    np.add.at(cm, (y, tops[:, 0]), 1)
    shown = model_class_names(model_names, K) or [f"class {i}" for i in range(K)]
    images.out(f"{where}: {len(used)} images of {len(names)} classes, matched to "
               f"{len(names)} of the {K} outputs of {args.model}")
    images.out(report(cm, names, shown, columns=outputs))
    images.out(f"top-{k5} accuracy {top5:.4f}")
    images.finish(len(used))
    result = {"data": where, "test_acc": top1, "top5_acc": top5,
              "images": len(used), "classes": len(names), "skipped": len(images.skipped)}
    images.out(json.dumps(result))
    return result


def evaluate_knn(model, args, plan: dict) -> dict:
    """k-NN top-1 and top-5 accuracy of the model's features (training.knn) on the plan's
    test images, fitted on its training images."""
    from ..embed import features_of_images
    from ..training.evaluate import topk_hits
    from ..training.knn import TEMPERATURE, knn_predict
    from .predict import normalization
    mean, std = normalization(model, args, args.model)
    used, feats, images = read_folder(
        model, args, plan["files"], "k-NN features",
        lambda batch: features_of_images(model, batch, mean, std))                    # (b, D)
    y = np.array([plan["files"][i][1] for i in used], dtype=np.int64)
    is_test = np.array(plan["is_test"])[used]
    names, n = plan["names"], len(plan["names"])
    if not is_test.any() or is_test.all():
        raise UserError(f"no {'test' if not is_test.any() else 'training'} image of "
                        f"{plan['where']} could be read (reasons above); k-NN needs both")
    n_train = int((~is_test).sum())
    k = args.knn
    if k > n_train and not args.quiet:
        images.say(f"note: --knn {k} is more than the {n_train} training images; using all "
                   f"{n_train}")
    k = min(k, n_train)
    scores = knn_predict(feats[~is_test], y[~is_test], feats[is_test], k, TEMPERATURE, n)
    y_test = y[is_test]
    k5 = min(5, n)
    top1 = float(topk_hits(scores, y_test, 1).mean())
    top5 = float(topk_hits(scores, y_test, k5).mean())
    cm = confusion_matrix(y_test, scores.argmax(1), n)
    images.out(f"k-NN (k={k}, T={TEMPERATURE}) on the {feats.shape[1]}-dimensional features of "
               f"{args.model}: {n_train} training and {len(y_test)} test images of {n} "
               f"classes; {plan['split']}")
    images.out(report(cm, names))
    images.out(f"top-{k5} accuracy {top5:.4f}")
    images.finish(len(used))
    result = {"data": plan["where"], "knn": k, "temperature": TEMPERATURE, "test_acc": top1,
              "top5_acc": top5, "images": int(len(y_test)),
              "train_images": n_train, "classes": n, "skipped": len(images.skipped)}
    images.out(json.dumps(result))
    return result


def entry() -> None:
    """The minivit-evaluate console script: exit status 1 when an image was skipped."""
    result = run(main)
    if result.get("skipped"):
        raise SystemExit(1)


if __name__ == "__main__":
    entry()
