"""config.py: the parameter-shape table, the named models and the Preprocessing record."""
import numpy as np
import pytest

from minivit import Preprocessing, ViT, ViTConfig
from minivit.config import MODELS, SIZES, model_config


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


def test_named_models_are_valid_configs_of_the_published_shapes():
    for name in MODELS:
        assert isinstance(model_config(name), ViTConfig), name
    def count(name, **kw):
        return sum(int(np.prod(s)) for s in model_config(name, **kw).param_shapes().values())
    assert {n: count(n) for n in ("vit-ti16", "vit-s16", "vit-b16", "vit-l16")} == {
        "vit-ti16": 5_717_416, "vit-s16": 22_050_664, "vit-b16": 86_567_656,
        "vit-l16": 304_326_632}                                 # timm's counts
    # transformers' Dinov2Model: the table stored for 518 px, plus the (D,) mask token
    assert count("dinov2-s14", image_size=518) + 384 == 22_056_576
    assert count("dinov2-b14", image_size=518) + 768 == 86_580_480
    b = model_config("vit-b16")
    assert (b.patch_size, b.dim, b.depth, b.heads, b.mlp_dim, b.gelu, b.eps) == \
        (16, 768, 12, 12, 3072, "tanh", 1e-6)                  # Google's ViT-B/16
    assert model_config("deit-s16").gelu == "erf" and model_config("deit-s16").dim == 384
    d = model_config("dinov2-s14")
    assert (d.patch_size, d.num_classes, d.gelu, d.grid) == (14, 0, "erf", 16)
    assert d.layer_scale is not None
    assert {k: (v["dim"], v["heads"]) for k, v in SIZES.items()} == {
        "tiny": (192, 3), "small": (384, 6), "medium": (512, 8), "base": (768, 12),
        "large": (1024, 16), "huge": (1280, 16), "giant": (1408, 16), "gigantic": (1664, 16)}
    assert ViTConfig(**SIZES["giant"]).mlp_dim == 6144
    assert ViTConfig(**SIZES["gigantic"]).mlp_dim == 8192


def test_model_config_overrides_and_errors():
    cfg = model_config("deit-b16", num_classes=37, image_size=384, drop_path=0.1)
    assert (cfg.num_classes, cfg.image_size, cfg.grid, cfg.drop_path) == (37, 384, 24, 0.1)
    with pytest.raises(ValueError, match=r"unknown model 'vit-x'; the named models are "
                                         r"deit-b16, .*vit-b16"):
        model_config("vit-x")
    with pytest.raises(ValueError, match=r"unknown ViTConfig fields \['colour'\]"):
        model_config("mnist", colour="red")
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        model_config("vit-s16", image_size=100)


def test_registry_holds_the_recipes_and_the_benchmark_shapes():
    """training/recipes.py names its sizes in the registry, and every shape benchmarks/bench.py
    measures (its CONFIGS, written out here) is a named model, or one with overrides."""
    from minivit.training.recipes import MODELS as RECIPES, mnist_config
    assert mnist_config("default") == model_config("mnist")
    assert {k: mnist_config(k) for k in RECIPES} == {k: model_config(v) for k, v in RECIPES.items()}
    assert mnist_config("tiny", dropout=0.1).dropout == 0.1
    with pytest.raises(ValueError, match="unknown model 'huge'"):
        mnist_config("huge")
    imagenet = dict(image_size=224, in_channels=3, num_classes=1000, depth=12, mlp_ratio=4.0)
    bench = {
        "mnist": dict(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64, depth=6,
                      heads=4, mlp_ratio=2.0),
        "mnist-p4": dict(image_size=28, patch_size=4, in_channels=1, num_classes=10, dim=128,
                         depth=6, heads=4, mlp_ratio=2.0),
        "vit-s16": dict(**imagenet, patch_size=16, dim=384, heads=6),
        "vit-b16": dict(**imagenet, patch_size=16, dim=768, heads=12),
        "tiny": dict(image_size=16, patch_size=4, in_channels=1, num_classes=10, dim=32, depth=2,
                     heads=2, mlp_ratio=2.0)}
    for name, fields in bench.items():
        assert model_config(name) == ViTConfig(**fields), name
    # the benchmarks' dinov2-s14 is DINOv2-S/14's shape as a plain ViT with 1000 classes
    assert model_config("dinov2-s14", num_classes=1000, layer_scale=None, gelu="tanh") == \
        ViTConfig(**imagenet, patch_size=14, dim=384, heads=6)


@pytest.mark.parametrize("fields, words", [
    (dict(dim=8, heads=10 ** 100), "not divisible by heads"),     # once a hang: the search
    (dict(dim=2 ** 53 + 1, heads=12), "not divisible by heads"),  # for a divisor was unbounded
    (dict(mlp_ratio=float("inf")), "finite"),
    (dict(mlp_ratio="4"), "finite"),
    (dict(class_token="yes"), "True or False"),
    (dict(fc_norm=1), "True or False")])
def test_fields_a_damaged_file_could_give_are_refused_quickly(fields, words):
    """Values a fuzzed config.json or checkpoint header produced: each is one clear error, at
    once, never an OverflowError, a TypeError from int() or a loop over every divisor."""
    from minivit.errors import UserError
    with pytest.raises(UserError, match=words):
        ViTConfig(**fields)


def test_preprocessing_channels_must_be_a_positive_integer():
    from minivit import Preprocessing
    from minivit.errors import UserError
    for bad in (2.0, 0, True, "3"):
        with pytest.raises(UserError, match="channels"):
            Preprocessing(mean=[0.5], std=[0.5], channels=bad)
