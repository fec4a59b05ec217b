"""transformers' layouts (minivit/io/hf.py): random models built with transformers' own classes
and tiny configs, saved by their save_pretrained, loaded by minivit in float64 and compared with
transformers in float64 (sdpa attention) at relative 1e-10; minivit's hf export loaded back by
transformers with no missing or unexpected keys, the same outputs and the same labels."""
import json

import numpy as np
import pytest

from minivit import ViT, ViTConfig
from minivit.io import load_pretrained, save_pretrained
from minivit.io.hf import hf_target

from conftest import has, images, randomize_params, relerr

TOL = 1e-10
needs_hf = pytest.mark.skipif(not (has("transformers") and has("safetensors") and has("torch")),
                              reason="needs transformers (pip install transformers safetensors)")
needs_st = pytest.mark.skipif(not has("safetensors"),
                              reason="needs safetensors (pip install -e .[hub])")
TINY = dict(hidden_size=12, num_hidden_layers=2, num_attention_heads=3, image_size=12,
            patch_size=4, num_channels=2)
LABELS = {0: "cat", 1: "dog", 2: "fish"}


def _hf(name):
    import transformers
    return getattr(transformers, name)


def randomize(model, seed=0):
    """Random values of every parameter (LayerNorm scales near 1), so that nothing is trivial."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            one = n.endswith("weight") and ("norm" in n or "layernorm" in n)
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if one else 0.0))
    return model.eval()


def reference(cls, folder, x, out):
    """transformers' own model from folder in float64 with sdpa attention, and its output."""
    import torch
    model, info = _hf(cls).from_pretrained(folder, dtype=torch.float64,
                                           attn_implementation="sdpa", output_loading_info=True)
    with torch.no_grad():
        y = getattr(model.eval()(torch.from_numpy(x)), out).numpy()
    return model, info, y


CASES = {   # name: (transformers class, config class, config kwargs, output)
    "vit": ("ViTForImageClassification", "ViTConfig",
            dict(intermediate_size=20, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}),
            "logits"),
    "vit_model": ("ViTModel", "ViTConfig", dict(intermediate_size=20), "pooler_output"),
    "deit_distilled": ("DeiTForImageClassificationWithTeacher", "DeiTConfig",
                       dict(intermediate_size=20, id2label=LABELS,
                            label2id={v: k for k, v in LABELS.items()}), "logits"),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(mlp_ratio=2, layerscale_value=0.5),
               "pooler_output"),
    "dinov2_registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
                         dict(mlp_ratio=2, num_register_tokens=3), "pooler_output"),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each case saved once by transformers' save_pretrained (safetensors)."""
    import torch
    torch.manual_seed(0)
    out = {}
    for i, (name, (cls, conf, kw, _)) in enumerate(CASES.items()):
        folder = tmp_path_factory.mktemp(name)
        randomize(_hf(cls)(_hf(conf)(**TINY, **kw)), seed=i).save_pretrained(folder)
        out[name] = folder
    return out


@needs_hf
@pytest.mark.parametrize("name", list(CASES))
def test_transformers_parity_float64(saved, name):
    cls, _, _, out = CASES[name]
    x = images(3, 2, 12, seed=4)
    _, _, ref = reference(cls, saved[name], x, out)
    model = load_pretrained(saved[name], dtype="float64")
    assert relerr(model.forward(x), ref) < TOL
    cfg = model.config
    assert (cfg.eps, cfg.gelu) == ((1e-6, "erf") if name.startswith("dinov2") else (1e-12, "erf"))
    if out == "logits":
        assert model.preprocessing.class_names == ["cat", "dog", "fish"]


@needs_hf
@pytest.mark.parametrize("name", list(CASES))
def test_hf_export_loads_in_transformers(saved, tmp_path, name):
    cls, _, _, out = CASES[name]
    model = load_pretrained(saved[name], dtype="float64")
    save_pretrained(model, tmp_path, format="hf")
    x = images(2, 2, 12, seed=5)
    ref_model, info, ref = reference(cls, tmp_path, x, out)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert relerr(model.forward(x), ref) < TOL
    if out == "logits":
        assert ref_model.config.id2label == LABELS
    back = load_pretrained(tmp_path, dtype="float64")       # and minivit reads its own export
    assert back.config == model.config and back.preprocessing == model.preprocessing
    assert all(np.array_equal(back.params[k], v) for k, v in model.params.items())


@needs_hf
@pytest.mark.parametrize("name", ["dinov2", "dinov2_registers"])
def test_dinov2_position_table_resampled_to_the_input(saved, name):
    """transformers resamples the table at every forward, in float32 (bicubic; antialiased for
    the registers model); minivit once on load, in float64: equal to float32 rounding."""
    cls, _, _, out = CASES[name]
    x = images(2, 2, 20, seed=6)                                       # grid 3 -> 5
    _, _, ref = reference(cls, saved[name], x, out)
    model = load_pretrained(saved[name], dtype="float64", image_size=20)
    assert model.params["pos_embed"].shape == (1, 26, 12)
    assert relerr(model.forward(x), ref) < 1e-6


@needs_hf
@pytest.mark.parametrize("name", ["vit", "deit_distilled"])
def test_vit_resampled_like_interpolate_pos_encoding(saved, name):
    """load_pretrained(image_size=) resamples as transformers' interpolate_pos_encoding=True
    does (bicubic, pixel centres, in float64 for ViT and DeiT): exact."""
    import torch
    cls = CASES[name][0]
    ref = _hf(cls).from_pretrained(saved[name], dtype=torch.float64, attn_implementation="sdpa")
    x = images(2, 2, 20, seed=7)                                       # grid 3 -> 5
    with torch.no_grad():
        want = ref.eval()(torch.from_numpy(x), interpolate_pos_encoding=True).logits.numpy()
    model = load_pretrained(saved[name], dtype="float64", image_size=20)
    assert relerr(model.forward(x), want) < TOL


@needs_hf
def test_dinov2_runs_at_its_processors_crop(saved, tmp_path):
    """With a preprocessor_config.json (crop 20), DINOv2 loads at the crop size by default."""
    import shutil
    shutil.copytree(saved["dinov2"], tmp_path / "d")
    pre = {"image_processor_type": "BitImageProcessor", "do_resize": True,
           "size": {"shortest_edge": 23}, "resample": 3, "do_center_crop": True,
           "crop_size": {"height": 20, "width": 20}, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456],
           "image_std": [0.229, 0.224]}
    (tmp_path / "d" / "preprocessor_config.json").write_text(json.dumps(pre))
    model = load_pretrained(tmp_path / "d", dtype="float64")
    assert model.config.image_size == 20
    p = model.preprocessing
    assert (p.resize_size, p.resize_mode, p.center_crop, p.resample, p.image_size) == \
        (23, "shortest", True, "bicubic", 20)


@needs_st
def test_hf_round_trip_without_transformers(tmp_path):
    """minivit -> hf folder -> minivit keeps every parameter, the config and the labels."""
    from minivit import Preprocessing
    cfg = ViTConfig(image_size=8, patch_size=4, in_channels=3, num_classes=3, dim=8, depth=2,
                    heads=2, mlp_ratio=2.0, gelu="erf", eps=1e-12, dtype="float64",
                    distilled=True)
    model = ViT(cfg, preprocessing=Preprocessing(mean=[0.5] * 3, std=[0.5] * 3, image_size=8,
                                                 channels=3, class_names=["a", "b", "c"]))
    randomize_params(model)
    save_pretrained(model, tmp_path, format="hf")
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["architectures"] == ["DeiTForImageClassificationWithTeacher"]
    assert conf["id2label"] == {"0": "a", "1": "b", "2": "c"}
    back = load_pretrained(tmp_path, dtype="float64")
    assert back.config == cfg and back.preprocessing.class_names == ["a", "b", "c"]
    x = images(2, 3, 8)
    np.testing.assert_array_equal(back.forward(x), model.forward(x))


@needs_st
@pytest.mark.parametrize("extra", [dict(pos_embed_cls=False), dict(pos_embed="sincos")])
def test_hf_export_of_a_table_without_class_rows(tmp_path, extra):
    """timm's no_embed_class and the fixed sincos table go out as a learned table with a zero
    CLS row: the same function."""
    model = ViT(ViTConfig(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8,
                          depth=1, heads=2, dtype="float64", **extra))
    randomize_params(model)
    save_pretrained(model, tmp_path, format="hf")
    back = load_pretrained(tmp_path, dtype="float64", eps=1e-6, gelu="tanh")
    assert back.config.pos_embed_cls and not back.params["pos_embed"][0, 0].any()
    x = images(2, 2, 8)
    assert relerr(back.forward(x), model.forward(x)) < 1e-13


@pytest.mark.parametrize("kwargs, match", [
    (dict(pool="mean"), "format='timm'"),
    (dict(num_classes=0), "pooler"),
    (dict(representation_size=4), "pre-logits"),
    (dict(layer_scale=1.0), "DINOv2 models with a head"),
    (dict(class_token=False, pool="mean"), "format='timm'"),
])
def test_hf_refuses_what_it_cannot_hold(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hf_target(ViTConfig(**{**dict(dim=8, heads=2, depth=1), **kwargs}))


# ---- what the fuzz run found (tests/fuzz): JSON values of the wrong type ------------------------
def hf_folder_for_fuzz(tmp_path, **cfg):
    from minivit import Preprocessing
    model = ViT(ViTConfig(**{**dict(image_size=8, patch_size=4, in_channels=3, num_classes=3,
                                    dim=8, depth=1, heads=2, gelu="erf", eps=1e-12), **cfg}),
                preprocessing=Preprocessing(mean=[0.5] * 3, std=[0.5] * 3, image_size=8,
                                            channels=3, resize_size=10, resize_mode="shortest",
                                            center_crop=True))
    save_pretrained(model, tmp_path, format="hf")
    return tmp_path


@needs_st
@pytest.mark.parametrize("file, key, value, match", [
    ("config.json", "hidden_act", ["gelu"], r"'hidden_act' is \['gelu'\] \(a list\), not a str"),
    ("config.json", "layer_norm_eps", {"a": 1}, "'layer_norm_eps' is .* not a finite number"),
    ("config.json", "layer_norm_eps", float("nan"), "not a finite number"),
    ("config.json", "num_attention_heads", [2], "'num_attention_heads' .* not an integer"),
    ("config.json", "architectures", 1.5, "'architectures' is 1.5 .* not a list of strings"),
    ("config.json", "model_type", None, "'model_type' is None \\(null\\), not a string"),
    ("preprocessor_config.json", "image_mean", [[0.5]], "'image_mean' .* list of them"),
    ("preprocessor_config.json", "image_std", {"a": 1}, "'image_std'"),
    ("preprocessor_config.json", "size", None, "'size' is None"),
    ("preprocessor_config.json", "size", [8, 8], "'size' is \\[8, 8\\]"),
    ("preprocessor_config.json", "crop_size", {"height": [8]}, "'crop_size'"),
    ("preprocessor_config.json", "crop_size", 10 ** 9, "'crop_size' .* image side of 1..16384"),
    ("preprocessor_config.json", "rescale_factor", {"a": 1}, "'rescale_factor'"),
    ("preprocessor_config.json", "resample", "bilinear", "'resample' .* not an integer"),
])
def test_config_values_of_the_wrong_json_type(tmp_path, file, key, value, match):
    """Each raised TypeError, AttributeError or IndexError deep in the layout code (float() of
    a list, unhashable list, None.get, 'float' object is not subscriptable): now one
    PretrainedError naming the folder, the file's key and the fix."""
    from minivit.io import PretrainedError, describe_pretrained
    folder = hf_folder_for_fuzz(tmp_path)
    conf = json.loads((folder / file).read_text())
    conf[key] = value
    (folder / file).write_text(json.dumps(conf))
    for load in (load_pretrained, describe_pretrained):
        with pytest.raises(PretrainedError, match=match) as e:
            load(folder)
        assert str(folder) in str(e.value) and file in str(e.value)


@needs_st
@pytest.mark.parametrize("crop, match", [(10, "crops to 10 pixels"),
                                         (4096, "at most 65536 patches")])
def test_dinov2_crop_the_model_cannot_run_at(tmp_path, crop, match):
    """A DINOv2 crop size not a multiple of the patch escaped as model.py's ValueError; a huge
    one would resample the position table to millions of rows."""
    from minivit.io import PretrainedError
    folder = hf_folder_for_fuzz(tmp_path, layer_scale=1.0, num_classes=0)
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    pre.update(do_center_crop=True, crop_size={"height": crop, "width": crop})
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(PretrainedError, match=match):
        load_pretrained(folder)


@needs_st
def test_tensors_of_the_wrong_rank(tmp_path):
    """A 1-D position table raised IndexError (shape[1]) in hf_config."""
    from minivit.io import PretrainedError
    from minivit.io.safetensors_file import read_safetensors, write_safetensors
    folder = hf_folder_for_fuzz(tmp_path)
    arrays, _ = read_safetensors(folder / "model.safetensors")
    arrays["vit.embeddings.position_embeddings"] = np.zeros(5, np.float32)
    write_safetensors(arrays, folder / "model.safetensors")
    with pytest.raises(PretrainedError, match=r"'embeddings.position_embeddings' has shape "
                                              r"\(5,\), not 3 dimensions"):
        load_pretrained(folder)
