"""config.py: the parameter-shape table and the Preprocessing record."""
import numpy as np
import pytest

from minivit import Preprocessing, ViT, ViTConfig


def test_param_shapes_is_the_model_layout():
    cfg = ViTConfig(image_size=8, patch_size=4, in_channels=3, dim=8, depth=2, heads=2,
                    mlp_ratio=1.5, num_classes=5, representation_size=6)
    shapes = cfg.param_shapes()
    assert shapes["patch_embed.w"] == (48, 8) and shapes["pos_embed"] == (1, 5, 8)
    assert shapes["blocks.1.attn.qkv.w"] == (8, 24) and shapes["blocks.1.mlp.fc1.w"] == (8, 12)
    assert shapes["pre_logits.w"] == (8, 6) and shapes["head.w"] == (6, 5)
    assert list(shapes)[-2:] == ["head.w", "head.b"]
    model = ViT(cfg)
    assert {k: v.shape for k, v in model.params.items()} == shapes
    assert "pos_embed" not in ViTConfig(pos_embed="sincos").param_shapes()


def test_preprocessing_validates_and_round_trips():
    pre = Preprocessing(mean=0.5, std=(0.25,), image_size=28, channels=1, class_names=[0, 1])
    assert pre.mean == [0.5] and pre.std == [0.25] and pre.class_names == ["0", "1"]
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    for kwargs, match in [(dict(mean=[0.1, 0.2], std=[0.3]), "one value each"),
                          (dict(mean=[0.1], std=[0.0]), "positive"),
                          (dict(mean=[0.1, 0.2], std=[1, 1], channels=3), "3 channels"),
                          (dict(mean=[], std=[]), "empty")]:
        with pytest.raises(ValueError, match=match):
            Preprocessing(**kwargs)
    with pytest.raises(ValueError, match="unknown Preprocessing fields"):
        Preprocessing.from_dict({"mean": [0], "std": [1], "crop": 0.9})


def test_model_carries_preprocessing_through_surgery():
    pre = Preprocessing(mean=[0.5], std=[0.5], image_size=8, channels=1, class_names=["a", "b"])
    model = ViT(ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, num_classes=2),
                preprocessing=pre)
    model.set_image_size(12)
    assert model.preprocessing.image_size == 12 and model.preprocessing.class_names == ["a", "b"]
    model.reset_head(3)                                   # new classes: the old names no longer fit
    assert model.preprocessing.class_names is None and model.preprocessing.mean == [0.5]
    assert np.isfinite(model.forward(np.zeros((1, 1, 12, 12))).sum())


def test_preprocessing_resize_fields_default_and_old_dicts_load():
    """The resize/crop fields of released checkpoints default to 'none': a dict written before
    they existed loads unchanged, and a new one round-trips."""
    old = {"mean": [0.5], "std": [0.5], "image_size": 28, "channels": 1, "class_names": None}
    pre = Preprocessing.from_dict(old)
    assert (pre.resize_size, pre.resize_mode, pre.center_crop, pre.resample) == \
        (None, "square", False, "bilinear")
    new = Preprocessing(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], image_size=224,
                        channels=3, resize_size=256, resize_mode="shortest", center_crop=True,
                        resample="bicubic")
    assert Preprocessing.from_dict(new.to_dict()) == new
    for kwargs, match in [(dict(resize_mode="fit"), "resize_mode"), (dict(resample="lanczos"),
                                                                     "resample"),
                          (dict(center_crop=True, image_size=None), "give image_size"),
                          (dict(resize_size=0), "resize_size")]:
        with pytest.raises(ValueError, match=match):
            Preprocessing(**{**dict(mean=[0.5], std=[0.5], image_size=8), **kwargs})


def test_model_surgery_keeps_the_resize_to_crop_ratio():
    pre = Preprocessing(mean=[0.5], std=[0.5], image_size=8, channels=1, resize_size=10,
                        resize_mode="shortest", center_crop=True)
    model = ViT(ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, num_classes=2),
                preprocessing=pre)
    model.set_image_size(16)
    assert (model.preprocessing.image_size, model.preprocessing.resize_size) == (16, 20)
