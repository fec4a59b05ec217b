"""Fine-tuning a pretrained ViT: the source model at the wanted resolution, the data at the
model's channels and size, a fresh head for the new classes, and which parameters stay frozen.

    model = load_pretrained("ViT-B_16.npz", image_size=384)     # position table resampled
    data = load_folder_for(model, "flowers/")                    # Dataset with its Preprocessing
    model.reset_head(len(data.preprocessing.class_names))        # zero head, as in the paper
    opts = TrainOptions(..., frozen=sorted(frozen_keys(model, head_only=True)))
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from ..data.batches import Dataset
from ..data.imagefolder import load_image_folder
from ..errors import UserError
from ..model import ViT


def trainable_keys(model: ViT, head_only: bool = False) -> list[str]:
    """Parameter names to train: all of them, or with head_only the classifier alone
    (model.head_keys(): head.w/.b, and head_dist.w/.b in a distilled model)."""
    return model.head_keys() if head_only else list(model.params)


def frozen_keys(model: ViT, head_only: bool = True) -> set[str]:
    """The complement of trainable_keys: what model.freeze() takes."""
    return set(model.params) - set(trainable_keys(model, head_only))


def load_source(npz: Optional[str] = None, checkpoint: Optional[str] = None,
                image_size: Optional[int] = None, gelu: Optional[str] = None,
                seed: int = 0, dtype: str = "float32", pretrained: Optional[str] = None) -> ViT:
    """The pretrained model at `npz`, `checkpoint` or `pretrained` (give one), at image_size if
    given: io.load_pretrained, which reads all of them (the commands' --model); kept for the
    scripts that name the source's kind. gelu and dtype apply to a foreign file; a minivit
    checkpoint records its GELU and keeps its dtype."""
    given = [p for p in (npz, checkpoint, pretrained) if p is not None]
    if len(given) != 1:
        raise UserError("give exactly one source: a Google .npz, a minivit checkpoint or a "
                        "pretrained folder (or call minivit.load_pretrained(path))")
    from ..io.pretrained import find_source, load_pretrained
    overrides = {"seed": seed} if image_size is None else {"seed": seed, "image_size": image_size}
    if find_source(given[0]).format != "minivit":
        overrides.update({"dtype": dtype, **({"gelu": gelu} if gelu else {})})
    elif gelu:
        raise UserError(f"{given[0]} is a minivit checkpoint, which records its own GELU; "
                        f"leave gelu out")
    return load_pretrained(given[0], **overrides)


def load_folder_for(model: ViT, folder: str, image_size: Optional[int] = None,
                    test_fraction: float = 0.2, seed: int = 0,
                    mean: Optional[Sequence[float]] = None,
                    std: Optional[Sequence[float]] = None) -> Dataset:
    """An image folder at the model's channels and size. A model whose preprocessing resizes
    (a transformers or timm source) takes photos of any size through that resize and center
    crop (load_photo_folder), unless image_size asks for another size; otherwise the images are
    read as they are (resized straight to image_size if given) and must come out at the
    model's size. mean/std replace the normalization when given (one value or one per channel):
    by default the source's (photos) or the folder's own statistics."""
    cfg = model.config
    pre = model.preprocessing
    if image_size is None and pre is not None and pre.resize_size is not None:
        data = load_photo_folder(model, folder, test_fraction, seed)
        return with_normalization(data, mean, std, cfg.in_channels)
    data = load_image_folder(folder, image_size=image_size, channels=cfg.in_channels,
                             test_fraction=test_fraction, seed=seed)
    S = data.x_train.shape[-1]
    if S != cfg.image_size:
        raise UserError(f"the images in {folder} are {S}x{S} but the model takes "
                        f"{cfg.image_size}x{cfg.image_size}; pass --image-size {cfg.image_size} "
                        f"to resize the images, or --image-size {S} to resample the model's "
                        f"position table to them")
    return with_normalization(data, mean, std, cfg.in_channels)


def load_photo_folder(model: ViT, folder: str, test_fraction: float = 0.2,
                      seed: int = 0) -> Dataset:
    """The photos of folder/<class>/ (or folder/train/<class>/ and folder/test/<class>/), of any
    size and any format Pillow reads, through the model's own preprocessing (resize, then center
    crop: io/preprocess.py, as transformers and timm prepare their inputs), at the model's size
    and channels. The Dataset's Preprocessing is the model's with the folder's class names, so
    a checkpoint of the fine-tuned model predicts with no flags: the same resize, crop and
    normalization, and the new labels."""
    from ..data.imagefolder import split_classes
    from ..data.photos import class_folder, fit_image, folder_splits, read_photo
    train_dir, test_dir = folder_splits(folder)
    if not (train_dir and test_dir):
        train_dir = test_dir = None
    names, train, test = split_classes(folder, train_dir, test_dir,
                                       lambda d, test=False: class_folder(d), test_fraction, seed)
    cfg, pre = model.config, model.preprocessing

    def load(files: list) -> tuple:
        x = np.stack([fit_image(read_photo(path), path, cfg.image_size, cfg.in_channels, pre,
                                False) for path, _ in files])                 # (M, C, S, S)
        return x, np.array([label for _, label in files], dtype=np.int64)
    x_train, y_train = load(train)
    x_test, y_test = load(test)
    return Dataset(x_train, y_train, x_test, y_test,
                   dataclasses.replace(pre, class_names=list(names)))


def with_normalization(data: Dataset, mean, std, channels: int) -> Dataset:
    """data with mean and/or std replaced in its Preprocessing (one value or one per channel;
    None keeps the data's)."""
    changes = {}
    for name, v in (("mean", mean), ("std", std)):
        if v is not None:
            if len(v) not in (1, channels):
                raise UserError(f"--{name} has {len(v)} values for {channels} "
                                f"channel(s); give one value or one per channel")
            changes[name] = [float(a) for a in v]
    if changes:
        pre = data.preprocessing
        merged = {"mean": pre.mean, "std": pre.std, **changes}
        if len(merged["mean"]) != len(merged["std"]):             # one given per channel
            n = max(len(merged["mean"]), len(merged["std"]))
            merged = {k: v * n if len(v) == 1 else v for k, v in merged.items()}
        data.preprocessing = dataclasses.replace(pre, **merged)
    return data
