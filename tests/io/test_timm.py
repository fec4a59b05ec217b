"""timm's VisionTransformer layout (minivit/io/timm.py). timm itself does not import here (its
torchvision fails beside the CPU torch), so the files are written from timm's documented key
names (timm/models/vision_transformer.py: cls_token, reg_token, dist_token, pos_embed with or
without the class rows (no_embed_class), blocks.{i}.ls1.gamma, norm / fc_norm, head, head_dist)
with safetensors' own writer, and the reference is an independent PyTorch forward with timm's
semantics reading those names. Where timm imports, `timm.create_model('local-dir:FOLDER')` on
an exported folder is the check to run (README)."""
import json
import math

import numpy as np
import pytest

from minivit import ViT, ViTConfig
from minivit.io import PretrainedError, load_pretrained, save_pretrained

from conftest import has, images, randomize_params, relerr

TOL = 1e-10
needs_st = pytest.mark.skipif(not has("safetensors"),
                              reason="needs safetensors (pip install -e .[hub])")
needs_st_torch = pytest.mark.skipif(not (has("safetensors") and has("torch")),
                                    reason="needs safetensors and torch (pip install -e "
                                           ".[hub,torch])")


def timm_keys(D=12, C=2, p=4, grid=3, depth=2, F=20, K=3, cls=True, dist=False, reg=0,
              no_embed_class=False, ls=False, fc_norm=False) -> dict:
    """timm's state-dict names and shapes for these model_args, written out by hand."""
    T = int(cls) + int(dist)
    s = {"patch_embed.proj.weight": (D, C, p, p), "patch_embed.proj.bias": (D,)}
    if cls:
        s["cls_token"] = (1, 1, D)
    if dist:
        s["dist_token"] = (1, 1, D)
    if reg:
        s["reg_token"] = (1, reg, D)
    s["pos_embed"] = (1, grid * grid + (0 if no_embed_class else T + reg), D)
    for i in range(depth):
        b = f"blocks.{i}."
        s.update({b + "norm1.weight": (D,), b + "norm1.bias": (D,),
                  b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
                  b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
                  b + "norm2.weight": (D,), b + "norm2.bias": (D,),
                  b + "mlp.fc1.weight": (F, D), b + "mlp.fc1.bias": (F,),
                  b + "mlp.fc2.weight": (D, F), b + "mlp.fc2.bias": (D,)})
        if ls:
            s.update({b + "ls1.gamma": (D,), b + "ls2.gamma": (D,)})
    norm = "fc_norm" if fc_norm else "norm"
    s.update({norm + ".weight": (D,), norm + ".bias": (D,)})
    if K:
        s.update({"head.weight": (K, D), "head.bias": (K,)})
        if dist:
            s.update({"head_dist.weight": (K, D), "head_dist.bias": (K,)})
    return s


def random_arrays(keys: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in keys.items():
        one = k.endswith(".weight") and "norm" in k
        out[k] = (rng.standard_normal(shape) * (0.4 if len(shape) > 1 else 0.3)
                  + (1.0 if one else 0.0))
    return out


def write_timm(folder, arrays: dict, config: dict) -> None:
    """What timm's save_for_hf leaves: model.safetensors (float32) + config.json."""
    from safetensors.numpy import save_file
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in arrays.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))


def torch_timm_forward(a: dict, x: np.ndarray, heads: int, pool: str, no_embed_class: bool,
                       eps: float = 1e-6) -> np.ndarray:
    """timm's VisionTransformer (eval) in float64 torch, read straight from the timm names."""
    import torch
    import torch.nn.functional as F
    A = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in a.items()}
    w = A["patch_embed.proj.weight"]
    D, p = w.shape[0], w.shape[-1]
    t = F.conv2d(torch.from_numpy(x), w, A["patch_embed.proj.bias"], stride=p)
    B = t.shape[0]
    t = t.flatten(2).transpose(1, 2)                                    # (B, P, D)
    prefix = [A[k].expand(B, -1, -1) for k in ("cls_token", "dist_token", "reg_token") if k in A]
    if no_embed_class:
        t = torch.cat(prefix + [t + A["pos_embed"]], 1)
    else:
        t = torch.cat(prefix + [t], 1) + A["pos_embed"]
    N, H = t.shape[1], heads
    i = 0
    while f"blocks.{i}.norm1.weight" in A:
        b = f"blocks.{i}."
        h = F.layer_norm(t, (D,), A[b + "norm1.weight"], A[b + "norm1.bias"], eps)
        q, k, v = F.linear(h, A[b + "attn.qkv.weight"], A[b + "attn.qkv.bias"]) \
            .reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        o = F.linear(o, A[b + "attn.proj.weight"], A[b + "attn.proj.bias"])
        t = t + (o * A[b + "ls1.gamma"] if b + "ls1.gamma" in A else o)
        h = F.layer_norm(t, (D,), A[b + "norm2.weight"], A[b + "norm2.bias"], eps)
        m = F.linear(F.gelu(F.linear(h, A[b + "mlp.fc1.weight"], A[b + "mlp.fc1.bias"])),
                     A[b + "mlp.fc2.weight"], A[b + "mlp.fc2.bias"])
        t = t + (m * A[b + "ls2.gamma"] if b + "ls2.gamma" in A else m)
        i += 1
    if "norm.weight" in A:
        t = F.layer_norm(t, (D,), A["norm.weight"], A["norm.bias"], eps)
    n_prefix = sum(A[k].shape[1] for k in ("cls_token", "dist_token", "reg_token") if k in A)
    h = t[:, 0] if pool == "token" else t[:, n_prefix:].mean(1)
    if "fc_norm.weight" in A:
        h = F.layer_norm(h, (D,), A["fc_norm.weight"], A["fc_norm.bias"], eps)
    if "head.weight" not in A:
        return ((h + t[:, 1]) / 2 if "dist_token" in A else h).numpy()
    y = F.linear(h, A["head.weight"], A["head.bias"])
    if "dist_token" in A:
        y = (y + F.linear(t[:, 1], A["head_dist.weight"], A["head_dist.bias"])) / 2
    return y.numpy()


CASES = {   # name: (timm_keys kwargs, model_args beyond the shapes)
    "augreg": (dict(), dict(global_pool="token")),
    "deit3": (dict(ls=True, no_embed_class=True), dict(init_values=1e-5, no_embed_class=True)),
    "mae_avg_fc_norm": (dict(fc_norm=True, K=0), dict(global_pool="avg", fc_norm=True)),
    "dinov2_reg4": (dict(reg=4, ls=True, no_embed_class=True, K=0),
                    dict(reg_tokens=4, init_values=1.0, no_embed_class=True)),
    "deit_distilled": (dict(dist=True), dict()),
    "avg_norm_registers": (dict(reg=2, no_embed_class=True),
                           dict(global_pool="avg", fc_norm=False, reg_tokens=2,
                                no_embed_class=True)),
}


def timm_config_json(kw: dict, args: dict, labels=None) -> dict:
    D, grid, p = kw.get("D", 12), kw.get("grid", 3), kw.get("p", 4)
    K = kw.get("K", 3)
    arch = "deit_tiny_distilled_patch16_224" if kw.get("dist") else "vit_tiny_patch16_224"
    model_args = dict(img_size=grid * p, patch_size=p, in_chans=2, embed_dim=D, depth=2,
                      num_heads=3, mlp_ratio=20 / 12, num_classes=K, **args)
    conf = {"architecture": arch, "num_classes": K, "num_features": D,
            "global_pool": args.get("global_pool", "token"), "model_args": model_args,
            "pretrained_cfg": {"input_size": [2, grid * p, grid * p], "interpolation": "bicubic",
                               "crop_pct": 0.9, "crop_mode": "center", "mean": [0.5, 0.5],
                               "std": [0.5, 0.5], "num_classes": K, "first_conv":
                               "patch_embed.proj", "classifier": "head"}}
    if labels:
        conf["label_names"] = labels
    return conf


@needs_st_torch
@pytest.mark.parametrize("name", list(CASES))
def test_timm_layout_matches_timm_semantics(tmp_path, name):
    kw, args = CASES[name]
    arrays = random_arrays(timm_keys(**kw), seed=len(name))
    arrays = {k: v.astype(np.float32).astype(np.float64) for k, v in arrays.items()}
    labels = ["a", "b", "c"] if kw.get("K", 3) else None
    write_timm(tmp_path / name, arrays, timm_config_json(kw, args, labels))
    model = load_pretrained(tmp_path / name, dtype="float64")
    x = images(3, 2, 12, seed=2)
    pool = args.get("global_pool", "token")
    ref = torch_timm_forward(arrays, x, 3, pool, kw.get("no_embed_class", False))
    assert relerr(model.forward(x), ref) < TOL
    cfg = model.config
    assert (cfg.eps, cfg.gelu, cfg.heads) == (1e-6, "erf", 3)
    pre = model.preprocessing
    assert (pre.image_size, pre.resize_size, pre.resize_mode, pre.center_crop, pre.resample) == \
        (12, math.floor(12 / 0.9), "shortest", True, "bicubic")
    assert pre.class_names == labels
    # the export writes exactly timm's keys back, and reads back the same
    save_pretrained(model, tmp_path / "out", format="timm")
    from safetensors.numpy import load_file
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert {k: v.shape for k, v in out.items()} == timm_keys(**kw)
    assert all(np.array_equal(out[k], arrays[k]) for k in arrays)
    back = load_pretrained(tmp_path / "out", dtype="float64")
    assert back.config == cfg and back.preprocessing == pre


@needs_st
def test_heads_from_model_args_architecture_or_override(tmp_path):
    kw = dict(D=192, C=3, p=16, grid=2, depth=1, F=768, K=0)
    arrays = random_arrays(timm_keys(**kw), seed=1)
    conf = {"architecture": "vit_tiny_patch16_224", "num_classes": 0,
            "pretrained_cfg": {"input_size": [3, 32, 32], "crop_pct": 1.0}}
    write_timm(tmp_path / "named", arrays, conf)
    assert load_pretrained(tmp_path / "named").config.heads == 3       # tiny: 3 heads
    write_timm(tmp_path / "anon", arrays, {**conf, "architecture": "my_vit"})
    with pytest.raises(PretrainedError, match="heads="):
        load_pretrained(tmp_path / "anon")
    assert load_pretrained(tmp_path / "anon", heads=4).config.heads == 4
    pre = load_pretrained(tmp_path / "named").preprocessing
    assert (pre.resize_size, pre.mean) == (32, [0.485, 0.456, 0.406])  # timm's defaults


@needs_st
def test_timm_export_of_hf_dinov2_registers_folds_the_class_row(tmp_path):
    """transformers' DINOv2-reg table has a CLS row; timm's reg models have none: the row is
    added into cls_token (timm's own conversion), the same function."""
    cfg = ViTConfig(image_size=8, patch_size=4, in_channels=2, num_classes=0, dim=8, depth=1,
                    heads=2, dtype="float64", layer_scale=1.0, num_registers=2, gelu="erf")
    model = ViT(cfg)
    randomize_params(model)
    save_pretrained(model, tmp_path, format="timm")
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["model_args"]["no_embed_class"] and conf["model_args"]["reg_tokens"] == 2
    back = load_pretrained(tmp_path, dtype="float64")
    assert not back.config.pos_embed_cls and back.params["pos_embed"].shape == (1, 4, 8)
    x = images(2, 2, 8)
    assert relerr(back.forward(x), model.forward(x)) < 1e-13


@needs_st
@pytest.mark.parametrize("args, match", [(dict(qk_norm=True), "qk-norm"),
                                         (dict(global_pool="map"), "global_pool='map'"),
                                         (dict(act_layer="quick_gelu"), "act_layer")])
def test_unsupported_timm_models_are_named(tmp_path, args, match):
    kw = dict()
    write_timm(tmp_path, random_arrays(timm_keys(**kw), 0), timm_config_json(kw, args))
    with pytest.raises(PretrainedError, match=match):
        load_pretrained(tmp_path)


@needs_st
def test_timm_export_refuses_pre_logits(tmp_path):
    with pytest.raises(ValueError, match="pre-logits"):
        save_pretrained(ViT(ViTConfig(dim=8, heads=2, depth=1, representation_size=4)),
                        tmp_path, format="timm")


# ---- what the fuzz run found (tests/fuzz): JSON values of the wrong type ------------------------
@needs_st
@pytest.mark.parametrize("path, value, match", [
    (("model_args",), 3, "'model_args' is 3 .* not an object"),          # 'int' not iterable
    (("model_args", "num_heads"), [2], r"'model_args.num_heads' .* not an integer"),
    (("pretrained_cfg", "input_size"), 1.5, r"'pretrained_cfg.input_size' is 1.5"),
    (("pretrained_cfg", "input_size"), [3], r"input_size \[3\]: minivit takes square"),
    (("pretrained_cfg", "crop_pct"), [0.9], r"'pretrained_cfg.crop_pct' .* finite number"),
    (("pretrained_cfg", "crop_pct"), 0, r"crop_pct=0.0: the fraction"),   # ZeroDivisionError
    (("pretrained_cfg", "crop_pct"), 1e-300, r"crop_pct=1e-300"),
    (("pretrained_cfg", "mean"), {"r": 0.5}, r"'pretrained_cfg.mean'"),
    (("layer_norm_eps",), {"a": 1}, r"'layer_norm_eps'"),
    (("pretrained_cfg",), None, None),                                  # null: the defaults
])
def test_config_values_of_the_wrong_json_type(tmp_path, path, value, match):
    cfg = ViTConfig(image_size=8, patch_size=4, in_channels=3, num_classes=3, dim=8, depth=1,
                    heads=2, gelu="erf")
    save_pretrained(ViT(cfg), tmp_path, format="timm")
    conf = json.loads((tmp_path / "config.json").read_text())
    node = conf
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    (tmp_path / "config.json").write_text(json.dumps(conf))
    if match is None:
        assert load_pretrained(tmp_path).config.heads == 2
        return
    with pytest.raises(PretrainedError, match=match) as e:
        load_pretrained(tmp_path)
    assert str(tmp_path) in str(e.value)
