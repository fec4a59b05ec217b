"""load_pretrained / save_pretrained / describe_pretrained (minivit/io/pretrained.py): what a
path holds is found from its contents (folders, bare files, shards, .npz), the overrides, the
refusals, `python -m minivit.io info|convert`, and `predict --pretrained` with the source's
preprocessing, compared with transformers' own image processor."""
import json
import shutil

import numpy as np
import pytest

from minivit import Preprocessing, ViT, ViTConfig
from minivit.cli import io as io_cli
from minivit.io import (PretrainedError, SafetensorsError, describe_pretrained, load_pretrained,
                        save_checkpoint, save_google_npz, save_pretrained)
from minivit.io.preprocess import prepare_image, resize_shape

from conftest import has, images, randomize_params, relerr

needs_st = pytest.mark.skipif(not has("safetensors"),
                              reason="needs safetensors (pip install -e .[hub])")
needs_hf = pytest.mark.skipif(not (has("transformers") and has("safetensors") and has("PIL")),
                              reason="needs transformers and Pillow (pip install transformers "
                                     "safetensors pillow)")
CFG = dict(image_size=12, patch_size=4, in_channels=3, num_classes=3, dim=12, depth=2, heads=3,
           mlp_ratio=2.0, gelu="erf", eps=1e-12, dtype="float64")
NAMES = ["tabby", "tiger", "lion"]


def hf_folder(tmp_path, name="hf", **extra):
    model = ViT(ViTConfig(**{**CFG, **extra}),
                preprocessing=Preprocessing(mean=[0.5] * 3, std=[0.5] * 3, image_size=12,
                                            channels=3, class_names=NAMES, resize_size=14,
                                            resize_mode="shortest", center_crop=True,
                                            resample="bicubic"))
    randomize_params(model)
    save_pretrained(model, tmp_path / name, format="hf")
    return tmp_path / name, model


@needs_st
def test_bare_safetensors_needs_heads_or_a_config_beside_it(tmp_path):
    folder, model = hf_folder(tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(folder / "model.safetensors", bare / "weights.safetensors")
    with pytest.raises(PretrainedError, match="pass heads="):
        load_pretrained(bare / "weights.safetensors")
    m = load_pretrained(bare / "weights.safetensors", heads=3, eps=1e-12, dtype="float64")
    x = images(2, 3, 12)
    assert relerr(m.forward(x), model.forward(x)) < 1e-14
    shutil.copy(folder / "config.json", bare / "config.json")          # now beside it
    assert load_pretrained(bare / "weights.safetensors").config.heads == 3


@needs_st
def test_sharded_checkpoint(tmp_path):
    from minivit.io.safetensors_file import read_safetensors, write_safetensors
    folder, model = hf_folder(tmp_path)
    arrays, _ = read_safetensors(folder / "model.safetensors")
    keys = sorted(arrays)
    parts = {"model-00001-of-00002.safetensors": keys[:10],
             "model-00002-of-00002.safetensors": keys[10:]}
    for name, ks in parts.items():
        write_safetensors({k: arrays[k] for k in ks}, folder / name)
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: n for n, ks in parts.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    back = load_pretrained(folder, dtype="float64")
    assert all(np.array_equal(back.params[k], v) for k, v in model.params.items())


@needs_st
def test_folders_without_safetensors(tmp_path):
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "config.json").write_text('{"model_type": "vit"}')
    (tmp_path / "pt" / "pytorch_model.bin").write_bytes(b"\x80\x02 not read")
    with pytest.raises(SafetensorsError, match="pytorch_model.bin is a pickle checkpoint"):
        load_pretrained(tmp_path / "pt")
    (tmp_path / "none").mkdir()
    with pytest.raises(PretrainedError, match="huggingface-cli download"):
        load_pretrained(tmp_path / "none")
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "missing")
    with pytest.raises(SafetensorsError, match="pickle"):
        load_pretrained(tmp_path / "model.pth")


@needs_st
def test_overrides_nonfinite_and_npz_sources(tmp_path):
    folder, model = hf_folder(tmp_path)
    with pytest.raises(ValueError, match="fixed by the checkpoint"):
        load_pretrained(folder, dim=16)
    with pytest.raises(ValueError, match="not ViTConfig fields"):
        load_pretrained(folder, colour="red")
    m = load_pretrained(folder, image_size=16, dtype="float32")
    assert m.config.image_size == 16 and m.params["pos_embed"].dtype == np.float32
    from minivit.io.safetensors_file import read_safetensors, write_safetensors
    arrays, _ = read_safetensors(folder / "model.safetensors")
    arrays["classifier.bias"] = arrays["classifier.bias"].copy()
    arrays["classifier.bias"][1] = np.nan
    write_safetensors(arrays, folder / "model.safetensors")
    with pytest.raises(SafetensorsError, match="NaN or inf in classifier.bias"):
        load_pretrained(folder)
    assert np.isnan(load_pretrained(folder, allow_nonfinite=True).params["head.b"][1])
    g = ViT(ViTConfig(**{**CFG, "eps": 1e-6, "gelu": "tanh"}))
    randomize_params(g)
    save_google_npz(g, tmp_path / "g.npz")
    assert load_pretrained(tmp_path / "g.npz", dtype="float64").config == g.config
    save_checkpoint(str(tmp_path / "c.npz"), model)
    back = load_pretrained(tmp_path / "c.npz")
    assert back.config == model.config and back.preprocessing.class_names == NAMES


@needs_st
def test_describe_reads_headers_only_and_io_command(tmp_path, capsys):
    folder, model = hf_folder(tmp_path)
    d = describe_pretrained(folder)
    assert (d["format"], d["architecture"], d["parameters"]) == \
        ("hf", "ViTForImageClassification", model.num_params())
    assert d["config"] == model.config.to_dict() | {"dtype": "float32"}
    assert d["preprocessing"]["class_names"] == NAMES
    io_cli.main(["info", str(folder)])
    assert json.loads(capsys.readouterr().out)["format"] == "hf"
    with pytest.warns(UserWarning, match="eps=1e-6"):            # timm: LayerNorm eps 1e-6
        io_cli.main(["convert", str(folder), str(tmp_path / "t"), "--to", "timm"])
    io_cli.main(["convert", str(tmp_path / "t"), str(tmp_path / "m.npz"), "--to", "minivit"])
    io_cli.main(["convert", str(tmp_path / "m.npz"), str(tmp_path / "hf2"), "--to", "hf"])
    assert "wrote" in capsys.readouterr().out
    back = load_pretrained(tmp_path / "hf2", dtype="float64")
    assert back.preprocessing == model.preprocessing
    x = images(2, 3, 12)
    assert relerr(back.forward(x), model.forward(x)) < 1e-6   # the files hold float32
    with pytest.raises(ValueError, match="format='timm' or 'hf'"):
        save_pretrained(ViT(ViTConfig(**{**CFG, "layer_scale": 1.0})), tmp_path / "x.npz",
                        format="google")
    with pytest.raises(ValueError, match="format='onnx'"):
        save_pretrained(model, tmp_path / "y", format="onnx")


def test_resize_shape_matches_transformers_and_torchvision_rule():
    pre = Preprocessing(mean=[0.5], std=[0.5], image_size=4, resize_size=5, resize_mode="shortest",
                        center_crop=True)
    assert resize_shape(30, 40, pre) == (5, 6) and resize_shape(41, 7, pre) == (29, 5)
    img = np.arange(3 * 5 * 7, dtype=np.uint8).reshape(3, 5, 7)
    crop = prepare_image(img, Preprocessing(mean=[0.5], std=[0.5], image_size=4, center_crop=True),
                         3)
    assert np.array_equal(crop, img[:, 0:4, 1:5])            # top (5-4)//2, left (7-4)//2


@needs_hf
@pytest.mark.parametrize("pre_conf", [
    {"image_processor_type": "ViTImageProcessor", "size": {"height": 12, "width": 12},
     "resample": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 15}, "resample": 3,
     "do_center_crop": True, "crop_size": {"height": 12, "width": 12},
     "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    {"image_processor_type": "DeiTImageProcessor", "size": {"height": 14, "width": 14},
     "resample": 3, "do_center_crop": True, "crop_size": {"height": 12, "width": 12},
     "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
])
def test_predict_pretrained_pixels_match_transformers_processor(tmp_path, capsys, pre_conf):
    from PIL import Image
    from transformers import AutoImageProcessor

    from minivit.cli import predict
    from minivit.data.batches import normalize
    folder, model = hf_folder(tmp_path)
    conf = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, **pre_conf}
    (folder / "preprocessor_config.json").write_text(json.dumps(conf))
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(29, 37), (40, 17)]):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(paths[-1])
    loaded = load_pretrained(folder, dtype="float64")
    pre = loaded.preprocessing
    ours = normalize(np.stack([prepare_image(np.asarray(Image.open(p)).transpose(2, 0, 1), pre,
                                             3) for p in paths]), "float64", pre.mean, pre.std)
    theirs = AutoImageProcessor.from_pretrained(folder)(
        [Image.open(p) for p in paths], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)      # theirs: float32
    res = predict.main(["--pretrained", str(folder), "--top-k", "2"] + paths)
    logits = loaded.forward(ours)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for r, row in zip(res, p):
        assert r["top"][0]["class"] == NAMES[int(row.argmax())]
        assert abs(r["top"][0]["prob"] - row.max()) < 1e-5
    out = capsys.readouterr().out
    assert all(p in out for p in paths) and any(n in out for n in NAMES)


# ---- what the fuzz run found (tests/fuzz) -------------------------------------------------------
@needs_st
@pytest.mark.parametrize("weight_map, match", [
    ({"a": {"file": "x"}}, "not the name of a file beside it"),     # TypeError: unhashable
    (3.5, "weight_map is not an object"),                          # AttributeError: .values
    ({"a": "../model.safetensors"}, "not the name of a file beside it"),
    ({"a": "/etc/passwd"}, "not the name of a file beside it"),
])
def test_index_weight_map_of_the_wrong_type_or_outside_the_folder(tmp_path, weight_map, match):
    folder, _ = hf_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(PretrainedError, match=match) as e:
        load_pretrained(folder)
    assert str(folder) in str(e.value)


@needs_st
@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json"])
def test_deeply_nested_json_is_a_file_error(tmp_path, name):
    """json raised RecursionError on a config nested thousands deep."""
    folder, _ = hf_folder(tmp_path)
    (folder / name).write_text("[" * 100000)
    with pytest.raises(PretrainedError, match=r"cannot read it as JSON \(RecursionError") as e:
        load_pretrained(folder)
    assert str(folder / name) in str(e.value)
