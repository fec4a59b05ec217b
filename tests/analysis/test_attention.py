"""analysis/: attention rollout math, CLS maps of a model, and the attention-maps command in
--quick mode (with and without matplotlib)."""
import sys

import numpy as np
import pytest

from minivit import ViT, ViTConfig
from minivit.analysis.attention import attention_maps, attention_rollout, cls_maps, upsample

from conftest import load_example, needs_mpl

TINY = dict(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=1, heads=2)


def softmax_rows(rng, *shape):
    z = rng.standard_normal(shape)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_rollout_identity_and_rows_sum_to_one():
    B, H, N = 2, 3, 5
    eye = np.broadcast_to(np.eye(N), (B, H, N, N))
    assert np.allclose(attention_rollout([eye, eye, eye]), np.eye(N))
    rng = np.random.default_rng(0)
    attn = [softmax_rows(rng, B, H, N, N) for _ in range(3)]
    R = attention_rollout(attn)
    assert R.shape == (B, N, N) and np.allclose(R.sum(-1), 1.0) and (R >= 0).all()
    a1, a2 = [(a.mean(1) + np.eye(N)) / 2 for a in attn[:2]]              # rownorm(A + I) = (A + I)/2
    two = attention_rollout(attn[:2])
    assert np.allclose(two, a2 @ a1)                                     # later layer on the left
    assert not np.allclose(two, a1 @ a2)
    assert np.allclose(attention_rollout(attn[:1], add_identity=False), attn[0].mean(1))


def test_cls_maps_and_model_attention():
    A = np.arange(2 * 5 * 5, dtype=float).reshape(2, 5, 5)
    assert np.array_equal(cls_maps(A, 2), A[:, 0, 1:].reshape(2, 2, 2))
    with pytest.raises(ValueError, match="3x3 grid"):
        cls_maps(A, 3)
    assert np.allclose(upsample(np.ones((1, 2, 2)), 8), 1.0)
    model = ViT(ViTConfig(**{**TINY, "depth": 2}), seed=0)
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    res = attention_maps(model, x)
    assert res["layers"].shape == (3, 2, 2, 2) and res["rollout"].shape == (3, 2, 2)
    _, attn = model.forward(x, return_attention=True)
    cls_self = np.stack([a.mean(1)[:, 0, 0] for a in attn], 1)           # (B, L)
    assert np.allclose(res["layers"].sum((2, 3)) + cls_self, 1.0, atol=1e-5)


@pytest.mark.parametrize("extra, prefix", [(dict(num_registers=3, layer_scale=0.5), 4),
                                           (dict(distilled=True), 2),
                                           (dict(class_token=False, pool="mean"), 0)])
def test_maps_read_the_patch_columns_past_cls_distillation_and_registers(extra, prefix):
    """With T prefix tokens (CLS, a distillation token, registers) before the patches, the maps
    are the CLS row's patch columns (no CLS token: the mean of the patch rows), of each layer
    and of the rollout over every token."""
    model = ViT(ViTConfig(**{**TINY, "depth": 2, **extra}), seed=0)
    assert model.config.num_prefix_tokens == prefix
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    res = attention_maps(model, x)
    _, attn = model.forward(x, return_attention=True)
    attn = [a.astype(np.float64) for a in attn]
    R = attention_rollout(attn)
    if prefix:
        assert res["query"] == "cls"
        want = np.stack([a.mean(1)[:, 0, prefix:] for a in attn], 1).reshape(2, 2, 2, 2)
        assert np.allclose(res["rollout"], R[:, 0, prefix:].reshape(2, 2, 2))
    else:
        assert res["query"] == "mean"
        want = np.stack([a.mean(1).mean(1) for a in attn], 1).reshape(2, 2, 2, 2)
        assert np.allclose(res["rollout"], R.mean(1).reshape(2, 2, 2))
    assert np.allclose(res["layers"], want, atol=1e-6)
    with pytest.raises(ValueError, match=f"plus {prefix + 1} prefix token"):
        cls_maps(R, 2, prefix + 1)
    with pytest.raises(ValueError, match="query must be"):
        cls_maps(R, 2, prefix, "max")


def test_a_model_without_a_head_has_maps_and_no_probabilities():
    model = ViT(ViTConfig(**{**TINY, "num_classes": 0}), seed=0)
    res = attention_maps(model, np.zeros((1, 1, 8, 8), np.float32))
    assert res["probs"] is None and res["rollout"].shape == (1, 2, 2)


@needs_mpl
def test_attention_example_quick_writes_png(tmp_path, capsys):
    mod = load_example("attention_maps")
    png = tmp_path / "att.png"
    res = mod.main(["--quick", "--out", str(png)])
    assert res["out"] == str(png) and res["layers"].shape == (3, 2, 4, 4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rollout" in capsys.readouterr().out


def test_attention_example_without_matplotlib(tmp_path, monkeypatch, capsys):
    mod = load_example("attention_maps")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    res = mod.main(["--quick", "--num-images", "2", "--out", str(tmp_path / "att.png")])
    out = capsys.readouterr().out
    assert res["out"] is None and not (tmp_path / "att.png").exists()
    assert "matplotlib is not installed" in out and "image 1:" in out
    with pytest.raises(ValueError, match="--checkpoint"):
        mod.main([])
