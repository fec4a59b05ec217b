"""The embed command and minivit.embed.features: the features are what each kind of head reads
(CLS, mean pooling, fc_norm, pre-logits, distilled), the .npz holds features, paths and
tokens, skipping and overwriting behave as predict's, and on transformers checkpoints the
features and tokens equal Dinov2Model's pooler_output / last_hidden_state and a ViT
classifier's final-normed tokens. Every image is made here; the transformers tests skip
without torch, transformers, safetensors or Pillow."""
import dataclasses
import os
import sys

import numpy as np
import pytest

from minivit import Preprocessing, ViT, ViTConfig
from minivit.cli import embed as embed_cli
from minivit.cli import run
from minivit.data.batches import normalize
from minivit.embed import features
from minivit.io.checkpoint import save_checkpoint
from minivit.layers import layernorm_forward

from conftest import images, randomize_params, relerr

TINY = dict(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=2, heads=2,
            dtype="float64")
HEADS = {   # what the head reads, for each kind of model
    "cls": {},
    "mean": dict(pool="mean"),
    "fc_norm": dict(pool="mean", fc_norm=True),
    "pre_logits": dict(representation_size=12),
    "distilled": dict(distilled=True),
    "registers": dict(num_registers=2, layer_scale=0.5),
    "headless": dict(num_classes=0),
}


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_features_are_the_headless_models_output(kind):
    """features(model, x) is what the same model without its head returns from forward (the
    head's input), and the tokens are the final LayerNorm of forward_features."""
    cfg = ViTConfig(**{**TINY, **HEADS[kind]})
    model = ViT(cfg, seed=1)
    randomize_params(model, seed=2)
    headless = ViT(dataclasses.replace(cfg, num_classes=0), seed=3)
    for k in headless.params:
        headless.params[k] = model.params[k]
    x = images(3, 1, 8)
    f, tokens = features(model, x, tokens=True)
    assert relerr(f, headless.forward(x)) < 1e-14
    assert relerr(features(model, x), f) == 0
    t = model.forward_features(x)                                        # before the final norm
    assert tokens.shape == (3, cfg.num_tokens, 16)
    if cfg.fc_norm:                                                      # timm: norm = Identity
        assert relerr(tokens, t) == 0
    else:
        normed, _ = layernorm_forward(t, model.params["norm.w"], model.params["norm.b"], cfg.eps)
        assert relerr(tokens, normed) == 0
    if kind in ("cls", "registers", "headless"):
        assert relerr(f, tokens[:, 0]) == 0                              # the final-normed CLS


@pytest.fixture
def tiny_ckpt(tmp_path):
    model = ViT(ViTConfig(**{**TINY, "dtype": "float32"}), seed=3)
    model.preprocessing = Preprocessing(mean=[0.4], std=[0.2], image_size=8, channels=1,
                                        class_names=["a", "b", "c"])
    path = str(tmp_path / "tiny.npz")
    save_checkpoint(path, model)
    return path, model


def test_embed_writes_features_paths_tokens_and_skips(tiny_ckpt, tmp_path, capsys, monkeypatch):
    path, model = tiny_ckpt
    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    names = ["a.npy", "b.npy", os.path.join("sub", "c.npy")]
    pix = [rng.integers(0, 256, (8, 8)).astype(np.uint8) for _ in names]
    for n, p in zip(names, pix):
        np.save(tmp_path / "imgs" / n, p)
    (tmp_path / "imgs" / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    out = tmp_path / "f.npz"
    res = embed_cli.main(["--model", path, str(tmp_path / "imgs"), "--out", str(out), "--tokens"])
    z = np.load(out)                                                     # no pickle needed
    want_paths = [str(tmp_path / "imgs" / n) for n in names]
    assert sorted(z.files) == ["features", "paths", "tokens"]
    assert z["paths"].tolist() == want_paths == [r["path"] for r in res]
    assert z["features"].dtype == z["tokens"].dtype == np.float32
    assert z["features"].shape == (3, 16) and z["tokens"].shape == (3, 5, 16)
    f, t = features(model, normalize(np.stack(pix), "float32", 0.4, 0.2), tokens=True)
    np.testing.assert_allclose(z["features"], f, rtol=0, atol=1e-5)
    np.testing.assert_allclose(z["tokens"], t, rtol=0, atol=1e-5)
    assert np.array_equal(z["features"], z["tokens"][:, 0])
    err = capsys.readouterr().err
    assert "skipped: " in err and "broken.npy" in err
    assert "embed: 3 of 4 images" in err.splitlines()[-1]
    assert sorted(os.listdir(tmp_path)) == ["f.npz", "imgs", "tiny.npz"]  # no temp file left
    # an existing --out is refused (exit 2) unless --overwrite; without --tokens, no tokens
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        run(embed_cli.main, ["--model", path, want_paths[0], "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {out} exists (a file)") and "--overwrite" in err
    embed_cli.main(["--model", path, want_paths[0], "--out", str(out), "--overwrite"])
    z = np.load(out)
    assert sorted(z.files) == ["features", "paths"] and z["features"].shape == (1, 16)
    # the console script: exit status 1 when an image was skipped; nothing written when all were
    gone = tmp_path / "none.npz"
    monkeypatch.setattr(sys, "argv", ["minivit-embed", "--model", path, "--out", str(gone),
                                      str(tmp_path / "imgs" / "broken.npy")])
    with pytest.raises(SystemExit) as e:
        embed_cli.entry()
    assert e.value.code == 1 and not gone.exists()
    assert "nothing written" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        embed_cli.main(["--model", path, "--batch-size", "-3", "--out", str(gone), want_paths[0]])
    assert e.value.code == 2
    assert "error: argument --batch-size: takes an integer >= 1, got '-3'" in \
        capsys.readouterr().err


def write_pngs(tmp_path, sizes) -> list:
    from PIL import Image
    rng = np.random.default_rng(7)
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(str(tmp_path / f"p{i}.png"))
        mode = "L" if i == 1 else "RGB"                 # a gray photo among them
        shape = (h, w) if mode == "L" else (h, w, 3)
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8), mode).save(paths[-1])
    return paths


def transformers_pixels(folder, paths):
    from PIL import Image
    from transformers import AutoImageProcessor
    proc = AutoImageProcessor.from_pretrained(folder)
    return proc([Image.open(p).convert("RGB") for p in paths],
                return_tensors="pt")["pixel_values"]


def need_extras():
    for module in ("torch", "transformers", "safetensors", "PIL"):
        pytest.importorskip(module)


def test_dinov2_features_are_pooler_output_and_tokens_last_hidden_state(tmp_path):
    """A random-weight transformers Dinov2Model saved with its image processor: minivit's
    features equal pooler_output and its tokens last_hidden_state (float64, and through the
    command at float32 from PNG files); forward_features equals the last hidden state before the
    final norm (hidden_states[-1])."""
    need_extras()
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from minivit.io import load_pretrained
    torch.manual_seed(0)
    conf = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                        image_size=28, patch_size=7, layerscale_value=0.5)
    ref = Dinov2Model(conf).eval()
    folder = tmp_path / "dinov2"
    ref.save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28},
                      resample=3, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    paths = write_pngs(tmp_path, [(30, 40), (36, 28)])
    pixels = transformers_pixels(folder, paths)                          # (2, 3, 28, 28)
    with torch.no_grad():
        theirs = ref.double()(pixels.double(), output_hidden_states=True)
    model = load_pretrained(folder, dtype="float64")
    assert model.config.num_classes == 0
    f, tokens = features(model, pixels.double().numpy(), tokens=True)
    assert relerr(f, theirs.pooler_output.numpy()) < 1e-12
    assert relerr(tokens, theirs.last_hidden_state.numpy()) < 1e-12
    assert relerr(model.forward_features(pixels.double().numpy()),
                  theirs.hidden_states[-1].numpy()) < 1e-12
    out = tmp_path / "f.npz"
    embed_cli.main(["--model", str(folder), *paths, "--out", str(out), "--tokens", "--quiet"])
    z = np.load(out)
    assert z["paths"].tolist() == paths
    assert relerr(z["features"], theirs.pooler_output.numpy()) < 1e-5
    assert relerr(z["tokens"], theirs.last_hidden_state.numpy()) < 1e-5


def test_vit_classifier_features_are_its_final_normed_cls(tmp_path):
    """A random-weight ViTForImageClassification: the features are the final-normed CLS token
    its classifier reads (last_hidden_state[:, 0] of its ViTModel), the tokens its
    last_hidden_state."""
    need_extras()
    import torch
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTForImageClassification, ViTImageProcessor
    torch.manual_seed(1)
    labels = {0: "tabby cat", 1: "coffee mug", 2: "space shuttle"}
    conf = HFViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, id2label=labels,
                       label2id={v: k for k, v in labels.items()})
    ref = ViTForImageClassification(conf).eval()
    folder = tmp_path / "vit"
    ref.save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(folder)
    paths = write_pngs(tmp_path, [(20, 24), (16, 16)])
    pixels = transformers_pixels(folder, paths)
    with torch.no_grad():
        hidden = ref.float().vit(pixels).last_hidden_state.numpy()          # (2, 5, 32)
    out = tmp_path / "f.npz"
    embed_cli.main(["--model", str(folder), *paths, "--out", str(out), "--tokens", "--quiet"])
    z = np.load(out)
    assert relerr(z["features"], hidden[:, 0]) < 1e-5
    assert relerr(z["tokens"], hidden) < 1e-5
