"""transformers' layouts: ViT (google/vit-*), DeiT (facebook/deit-*) and DINOv2 (facebook/dinov2-*,
with and without registers), as a folder of config.json + model.safetensors
[+ preprocessor_config.json], the files `save_pretrained` writes and the hub serves.

Every weight is a torch tensor, Linear weights (out, in). The base model's keys, prefixed with
'vit.', 'deit.', 'dinov2.' or 'dinov2_with_registers.' inside a *ForImageClassification model:

    embeddings.patch_embeddings.projection.{weight (D, C, p, p), bias}   patch_embed  (conv)
    embeddings.cls_token (1, 1, D), embeddings.distillation_token (DeiT), embeddings.register_tokens
        (1, R, D) (DINOv2 with registers), embeddings.position_embeddings (1, T' + P, D)
    encoder.layer.{i}.
        layernorm_before | norm1 (DINOv2)                                blocks.{i}.norm1
        attention.attention.{query,key,value}.{weight,bias}              blocks.{i}.attn.qkv (qkv)
        attention.output.dense                                           blocks.{i}.attn.proj
        layer_scale1.lambda1, layer_scale2.lambda1 (DINOv2)              blocks.{i}.ls1.g, ls2.g
        layernorm_after | norm2                                          blocks.{i}.norm2
        intermediate.dense | mlp.fc1,  output.dense | mlp.fc2            blocks.{i}.mlp.fc1, fc2
    layernorm                                                            norm
    pooler.dense (ViTModel: tanh(W h_cls + b))                           pre_logits, num_classes=0
    classifier (ViTForImageClassification), cls_classifier +             head, head_dist
        distillation_classifier (DeiTForImageClassificationWithTeacher)

Defaults as transformers has them: LayerNorm eps from config.json (1e-12 for ViT and DeiT,
1e-6 for DINOv2), exact GELU for hidden_act 'gelu'. DINOv2 runs at its image processor's crop
size (224 for facebook/dinov2-*) while its table is stored for 518: transformers resamples the
table at every forward (bicubic; antialiased for the registers model); minivit resamples it once,
on load, the same way (pass image_size= for another size).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..config import Preprocessing, ViTConfig
from ..errors import UserError
from .layout import (MAX_PATCHES, Layout, block_count, check_json, dims, key_table, make_config,
                     mlp_ratio_for, to_layout)

__all__ = ["hf_family", "hf_table", "hf_config", "hf_preprocessing", "hf_layout", "to_hf",
           "hf_pos_resample", "HF_FAMILIES"]

HF_FAMILIES = ("vit", "deit", "dinov2", "dinov2_with_registers")
BASE = {"vit": "vit.", "deit": "deit.", "dinov2": "dinov2.",
        "dinov2_with_registers": "dinov2_with_registers."}
ARCH = {("vit", "classifier"): "ViTForImageClassification", ("vit", "pooler"): "ViTModel",
        ("vit", "none"): "ViTModel", ("deit", "classifier"): "DeiTForImageClassification",
        ("deit", "teacher"): "DeiTForImageClassificationWithTeacher", ("deit", "none"): "DeiTModel",
        ("dinov2", "none"): "Dinov2Model",
        ("dinov2_with_registers", "none"): "Dinov2WithRegistersModel"}
ATT = "attention.attention."
BLOCK_VIT = {"norm1.w": ("same", "layernorm_before.weight"),
             "norm1.b": ("same", "layernorm_before.bias"),
             "attn.qkv.w": ("qkv", tuple(ATT + n + ".weight" for n in ("query", "key", "value"))),
             "attn.qkv.b": ("qkv_b", tuple(ATT + n + ".bias" for n in ("query", "key", "value"))),
             "attn.proj.w": ("linear", "attention.output.dense.weight"),
             "attn.proj.b": ("same", "attention.output.dense.bias"),
             "norm2.w": ("same", "layernorm_after.weight"),
             "norm2.b": ("same", "layernorm_after.bias"),
             "mlp.fc1.w": ("linear", "intermediate.dense.weight"),
             "mlp.fc1.b": ("same", "intermediate.dense.bias"),
             "mlp.fc2.w": ("linear", "output.dense.weight"),
             "mlp.fc2.b": ("same", "output.dense.bias")}
BLOCK_DINO = {**BLOCK_VIT,
              "norm1.w": ("same", "norm1.weight"), "norm1.b": ("same", "norm1.bias"),
              "norm2.w": ("same", "norm2.weight"), "norm2.b": ("same", "norm2.bias"),
              "mlp.fc1.w": ("linear", "mlp.fc1.weight"), "mlp.fc1.b": ("same", "mlp.fc1.bias"),
              "mlp.fc2.w": ("linear", "mlp.fc2.weight"), "mlp.fc2.b": ("same", "mlp.fc2.bias"),
              "ls1.g": ("same", "layer_scale1.lambda1"), "ls2.g": ("same", "layer_scale2.lambda1")}
EMBED = {"patch_embed.w": ("conv", "embeddings.patch_embeddings.projection.weight"),
         "patch_embed.b": ("same", "embeddings.patch_embeddings.projection.bias"),
         "cls_token": ("same", "embeddings.cls_token"),
         "dist_token": ("same", "embeddings.distillation_token"),
         "reg_tokens": ("same", "embeddings.register_tokens"),
         "pos_embed": ("same", "embeddings.position_embeddings"),
         "norm.w": ("same", "layernorm.weight"), "norm.b": ("same", "layernorm.bias"),
         "pre_logits.w": ("linear", "pooler.dense.weight"),
         "pre_logits.b": ("same", "pooler.dense.bias")}
HEADS = {"classifier": {"head.w": ("linear", "classifier.weight"),
                        "head.b": ("same", "classifier.bias")},
         "teacher": {"head.w": ("linear", "cls_classifier.weight"),
                     "head.b": ("same", "cls_classifier.bias"),
                     "head_dist.w": ("linear", "distillation_classifier.weight"),
                     "head_dist.b": ("same", "distillation_classifier.bias")}}
MASK_TOKEN = "embeddings.mask_token"      # DINOv2's pre-training mask token: not used here
GELU = {"gelu": "erf", "gelu_python": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
PIL_FILTERS = {0: "nearest", 2: "bilinear", 3: "bicubic"}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CONFIG_SCHEMA = {   # the JSON types of the config.json entries read here (layout.check_json)
    "model_type": "str", "architectures": "strs", "hidden_act": "str",
    "num_attention_heads": "int", "layer_norm_eps": "number", "layerscale_value": "number",
    "use_swiglu_ffn": "bool?", "qkv_bias": "bool?", "id2label": "object?"}
PREPROCESSOR_SCHEMA = {   # ... and of preprocessor_config.json
    "do_rescale": "bool?", "rescale_factor": "number", "image_mean": "numbers",
    "image_std": "numbers", "do_normalize": "bool?", "resample": "int", "size": "size",
    "do_center_crop": "bool?", "crop_size": "size", "do_resize": "bool?"}


# ---- layout -------------------------------------------------------------------------------------
def hf_family(conf: dict, arrays: dict) -> tuple[str, str]:
    """(family, head) of a transformers checkpoint: family from config.json's model_type (else
    the keys), head 'classifier' | 'teacher' | 'pooler' | 'none' from the keys."""
    family = conf.get("model_type")
    if family is None:
        keys = " ".join(arrays)
        family = ("dinov2_with_registers" if "embeddings.register_tokens" in keys else
                  "dinov2" if "layer_scale1.lambda1" in keys else
                  "deit" if "embeddings.distillation_token" in keys else "vit")
    if family not in HF_FAMILIES:
        raise UserError(f"model_type {family!r} is not a transformers ViT minivit reads (it reads "
                        f"{', '.join(HF_FAMILIES)})")
    if "cls_classifier.weight" in arrays:
        return family, "teacher"
    if "classifier.weight" in arrays:
        if family.startswith("dinov2"):
            raise UserError("a Dinov2ForImageClassification checkpoint: its classifier reads "
                            "[CLS token, mean of the patch tokens], a head minivit does not have; "
                            "load the backbone alone (Dinov2Model) and fine-tune a new head")
        return family, "classifier"
    return family, "pooler" if "pooler.dense.weight" in arrays else "none"


def base_names(keys, family: str) -> dict:
    """{key of the base model without the 'vit.'/'deit.'/'dinov2.' prefix a classifier adds:
    the key in the file}."""
    prefix = BASE[family]
    return {k[len(prefix):] if k.startswith(prefix) else k: k for k in keys}


def hf_table(cfg: ViTConfig, family: str, head: str, prefixed: bool = True) -> dict:
    """{minivit key: (transform, key in the file)} for cfg in this family (see layout.py);
    keys of the base model get the family's prefix when a classifier sits on top (and
    prefixed)."""
    block = BLOCK_DINO if family.startswith("dinov2") else BLOCK_VIT
    base = BASE[family] if prefixed and head in ("classifier", "teacher") else ""
    top = {**{k: (kind, base + key) for k, (kind, key) in EMBED.items()}, **HEADS.get(head, {})}
    return key_table(cfg, top, block, base + "encoder.layer.{}.", f"transformers' {family} layout")


# ---- config -------------------------------------------------------------------------------------
def hf_config(conf: dict, arrays: dict, family: str, head: str, **overrides) -> ViTConfig:
    """The ViTConfig of a transformers checkpoint: shapes from the tensors (base prefix already
    stripped), the rest from config.json (heads, eps, GELU, layer scale); overrides win."""
    need = ["embeddings.patch_embeddings.projection.weight", "embeddings.position_embeddings"]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise UserError(f"not a transformers ViT checkpoint: missing {missing}")
    D, C, p, p2 = dims(arrays, need[0], 4)
    T = int("embeddings.cls_token" in arrays) + int("embeddings.distillation_token" in arrays)
    rows = dims(arrays, need[1], 3)[1]
    grid = math.isqrt(max(rows - T, 0))
    if p != p2 or grid * grid != rows - T:
        raise UserError(f"position table {arrays[need[1]].shape} is not {T} class rows + a "
                        f"square grid, or the patches are not square ({p}x{p2})")
    dino = family.startswith("dinov2")
    fc1 = arrays.get("encoder.layer.0." + ("mlp.fc1.weight" if dino
                                           else "intermediate.dense.weight"))
    F = dims(arrays, "encoder.layer.0." + ("mlp.fc1.weight" if dino else
                                           "intermediate.dense.weight"), 2)[0] \
        if fc1 is not None else 4 * D
    act = conf.get("hidden_act", "gelu")
    if act not in GELU and "gelu" not in overrides:
        raise UserError(f"hidden_act={act!r}: minivit has the exact GELU ('gelu') and its tanh "
                        f"approximation ('gelu_new', 'gelu_pytorch_tanh'); pass gelu= to choose")
    if conf.get("use_swiglu_ffn") or conf.get("qkv_bias") is False:
        raise UserError("SwiGLU MLPs (dinov2-giant) and attention without qkv biases are not "
                        "supported")
    heads = overrides.pop("heads", conf.get("num_attention_heads"))
    if heads is None:
        raise UserError("the head count is not in the tensors and there is no config.json "
                        "beside the file: pass heads= (e.g. 12 for a base model)")
    R = dims(arrays, "pooler.dense.weight", 2)[0] if head == "pooler" else None
    K = {"classifier": "classifier.weight", "teacher": "cls_classifier.weight"}.get(head)
    fields = dict(
        image_size=grid * p, patch_size=p, in_channels=C, dim=D, heads=heads,
        mlp_ratio=mlp_ratio_for(D, F), depth=block_count(arrays, "encoder.layer."),
        num_classes=dims(arrays, K, 2)[0] if K else 0,
        representation_size=R, gelu=GELU.get(act, "erf"),
        eps=float(conf.get("layer_norm_eps", 1e-6 if dino else 1e-12)),
        layer_scale=float(conf.get("layerscale_value", 1.0)) if dino else None,
        num_registers=dims(arrays, "embeddings.register_tokens", 3)[1]
        if "embeddings.register_tokens" in arrays else 0,
        distilled="embeddings.distillation_token" in arrays, pool="cls")
    return make_config(fields, overrides)


def hf_pos_resample(family: str) -> dict:
    """How transformers resamples this family's position table for another input size."""
    return dict(method="bicubic", align_corners=False,
                antialias=family == "dinov2_with_registers")


def hf_preprocessing(pre_conf: dict | None, cfg: ViTConfig, family: str,
                     class_names) -> Preprocessing:
    """preprocessor_config.json (ViTImageProcessor, DeiTImageProcessor, BitImageProcessor) as a
    Preprocessing; without one, the family's processor defaults at the model's size."""
    C = cfg.in_channels
    default_mean = [0.5] * 3 if family == "vit" else IMAGENET_MEAN
    default_std = [0.5] * 3 if family == "vit" else IMAGENET_STD
    if C != 3:
        default_mean, default_std = [default_mean[0]] * C, [default_std[0]] * C
    if pre_conf is None:                  # the processor's defaults: resize to the model's size
        return Preprocessing(mean=default_mean, std=default_std, image_size=cfg.image_size,
                             channels=C, class_names=class_names, resize_size=cfg.image_size)
    pc = pre_conf
    if pc.get("do_rescale", True) and abs(pc.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        raise UserError(f"rescale_factor={pc['rescale_factor']}: minivit scales pixels by 1/255")
    mean, std = pc.get("image_mean", default_mean), pc.get("image_std", default_std)
    if not pc.get("do_normalize", True):
        mean, std = [0.0], [1.0]
    resample = pc.get("resample", 2)
    if resample not in PIL_FILTERS:
        raise UserError(f"resample={resample} (a PIL filter number): minivit resizes with "
                        f"nearest (0), bilinear (2) or bicubic (3)")
    size, mode = _hf_size(pc.get("size", cfg.image_size))
    crop = bool(pc.get("do_center_crop", False))
    crop_size = _hf_size(pc.get("crop_size", size))[0] if crop else None
    resize = pc.get("do_resize", True)
    return Preprocessing(mean=mean, std=std, image_size=crop_size or size, channels=C,
                         class_names=class_names, resize_size=size if resize else None,
                         resize_mode=mode, center_crop=crop, resample=PIL_FILTERS[resample])


def _hf_size(size) -> tuple[int, str]:
    """(pixels, 'square'|'shortest') of an image processor's size entry."""
    if isinstance(size, int):
        return size, "square"
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), "shortest"
    h, w = size.get("height"), size.get("width")
    if h is None or h != w:
        raise UserError(f"image processor size {size}: minivit takes square sizes or a "
                        f"shortest_edge")
    return int(h), "square"


def class_names_of(conf: dict, K: int):
    """id2label as a list, or None (no labels, or not one per output)."""
    labels = conf.get("id2label")
    if not labels or not K:
        return None
    try:
        names = {int(i): str(n) for i, n in labels.items()}
    except (TypeError, ValueError, AttributeError):
        return None
    return [names[i] for i in range(K)] if sorted(names) == list(range(K)) else None


def hf_layout(arrays: dict, conf: dict, pre_conf: dict | None = None, **overrides) -> Layout:
    """The Layout of a transformers checkpoint: its tensors (a classifier's base-model prefix
    stripped), config.json and preprocessor_config.json; DINOv2 runs at its processor's crop."""
    check_json(conf, CONFIG_SCHEMA, "config.json")
    if pre_conf is not None:
        check_json(pre_conf, PREPROCESSOR_SCHEMA, "preprocessor_config.json")
    family, head = hf_family(conf, arrays)
    names = base_names(arrays, family)
    arrays = {k: arrays[name] for k, name in names.items()}
    cfg = hf_config(conf, arrays, family, head, **overrides)
    pre = hf_preprocessing(pre_conf, cfg, family, class_names_of(conf, cfg.num_classes))
    run_size = pre.image_size if family.startswith("dinov2") else None
    if run_size is not None and (run_size % cfg.patch_size
                                 or (run_size // cfg.patch_size) ** 2 > MAX_PATCHES):
        raise UserError(f"preprocessor_config.json crops to {run_size} pixels, which the model "
                        f"(patch {cfg.patch_size}) cannot run at: a multiple of the patch size "
                        f"with at most {MAX_PATCHES} patches is needed; fix its crop_size")
    return Layout(cfg, hf_table(cfg, family, head, prefixed=False), arrays, pre,
                  f"transformers' {family} layout", (conf.get("architectures") or [family])[0],
                  hf_pos_resample(family), image_size=run_size, ignored=(MASK_TOKEN,),
                  names=names)


# ---- writing ------------------------------------------------------------------------------------
def hf_target(cfg: ViTConfig) -> tuple[str, str]:
    """(family, head) that holds this model exactly, or ValueError saying why none does."""
    other = "; save it with format='timm' instead"
    if not cfg.class_token or cfg.pool != "cls":
        raise UserError("transformers' ViT, DeiT and DINOv2 pool the CLS token: a model "
                        "without one, or with mean pooling, has no transformers layout" + other)
    if cfg.num_registers or cfg.layer_scale is not None:
        family = "dinov2_with_registers" if cfg.num_registers else "dinov2"
        if cfg.num_classes or cfg.representation_size or cfg.distilled:
            raise UserError("transformers' DINOv2 models with a head read [CLS, mean of "
                            "patches]; only the headless backbone (num_classes=0, no "
                            "representation_size) has a transformers layout" + other)
        if cfg.mlp_dim != cfg.dim * int(cfg.mlp_ratio) or cfg.mlp_ratio != int(cfg.mlp_ratio):
            raise UserError(f"transformers' DINOv2 config takes an integer mlp_ratio, not "
                            f"{cfg.mlp_ratio}" + other)
        return family, "none"
    if cfg.distilled:
        if not cfg.num_classes:
            raise UserError("a headless distilled model has no transformers layout" + other)
        return "deit", "teacher"
    if cfg.num_classes:
        if cfg.representation_size:
            raise UserError("transformers' ViTForImageClassification has no pre-logits layer: "
                            "save with format='google', or reset_head() without it")
        return "vit", "classifier"
    if not cfg.representation_size:
        raise UserError("a headless ViT without the tanh pooler: transformers' ViTModel always "
                        "has one (it would report pooler.dense missing)" + other)
    return "vit", "pooler"


def to_hf(params: dict, cfg: ViTConfig, pre: Preprocessing | None, pos_table=None):
    """(tensors, config.json dict, preprocessor_config.json dict or None) of a model; params are
    host arrays. A position table without class rows, or a fixed sincos one (pos_table), is
    written as a learned table with zero class rows, and a DINOv2 layout without LayerScale
    with LayerScale 1: the same function either way."""
    family, head = hf_target(cfg)
    params = dict(params)
    params["pos_embed"] = full_pos_table(params, cfg, pos_table)
    full = dataclasses.replace(cfg, pos_embed="learned", pos_embed_cls=True)
    if family.startswith("dinov2") and cfg.layer_scale is None:
        full = dataclasses.replace(full, layer_scale=1.0)
        for i in range(cfg.depth):
            for k in ("ls1.g", "ls2.g"):
                params[f"blocks.{i}.{k}"] = np.ones(cfg.dim, dtype=params["norm.w"].dtype)
    tensors = to_layout(params, hf_table(full, family, head), full)
    if family.startswith("dinov2"):
        tensors[MASK_TOKEN] = np.zeros((1, cfg.dim), dtype=params["norm.w"].dtype)
    return tensors, hf_json(full, family, head, pre), hf_preprocessor_json(pre)


def full_pos_table(params: dict, cfg: ViTConfig, pos_table=None) -> np.ndarray:
    """The learned-style table (1, T + P, D), with a row per class token (zero where cfg's table
    has none), of a model's learned table or its fixed one (pos_table, host)."""
    pos = params["pos_embed"] if "pos_embed" in params else pos_table
    if cfg.pos_embed_cls:
        return pos
    pad = np.zeros((1, cfg.num_class_tokens, cfg.dim), dtype=pos.dtype)
    return np.concatenate([pad, pos], axis=1)                              # (1, T + P, D)


def hf_json(cfg: ViTConfig, family: str, head: str, pre: Preprocessing | None) -> dict:
    """config.json for transformers' from_pretrained."""
    conf = {"architectures": [ARCH[family, head]], "model_type": family,
            "hidden_size": cfg.dim, "num_hidden_layers": cfg.depth,
            "num_attention_heads": cfg.heads, "hidden_act": {"erf": "gelu",
                                                             "tanh": "gelu_pytorch_tanh"}[cfg.gelu],
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "layer_norm_eps": cfg.eps, "image_size": cfg.image_size, "patch_size": cfg.patch_size,
            "num_channels": cfg.in_channels, "qkv_bias": True, "initializer_range": 0.02}
    if family.startswith("dinov2"):
        conf.update(mlp_ratio=int(cfg.mlp_ratio), layerscale_value=float(cfg.layer_scale),
                    drop_path_rate=0.0, use_swiglu_ffn=False)
        if family == "dinov2":
            conf["use_mask_token"] = True
        else:
            conf["num_register_tokens"] = cfg.num_registers
    else:
        conf.update(intermediate_size=cfg.mlp_dim, encoder_stride=cfg.patch_size)
        if head == "pooler":
            conf.update(pooler_output_size=cfg.representation_size, pooler_act="tanh")
    if cfg.num_classes:
        names = (pre.class_names if pre is not None and pre.class_names is not None
                 and len(pre.class_names) == cfg.num_classes
                 else [f"LABEL_{i}" for i in range(cfg.num_classes)])
        conf["id2label"] = {str(i): n for i, n in enumerate(names)}
        conf["label2id"] = {n: i for i, n in enumerate(names)}
    return conf


def hf_preprocessor_json(pre: Preprocessing | None) -> dict | None:
    """preprocessor_config.json for the model's Preprocessing (None: no file). A square resize
    without a crop is a ViTImageProcessor; anything with a crop or a shortest-edge resize a
    BitImageProcessor (resize, center crop, rescale, normalize)."""
    if pre is None:
        return None
    C = pre.channels or 3
    mean = pre.mean * C if len(pre.mean) == 1 else pre.mean
    std = pre.std * C if len(pre.std) == 1 else pre.std
    filters = {v: k for k, v in PIL_FILTERS.items()}
    S = pre.image_size
    resize = pre.resize_size or S
    if resize is None:
        return None
    size = ({"shortest_edge": resize} if pre.resize_mode == "shortest"
            else {"height": resize, "width": resize})
    out = {"do_resize": True, "size": size, "resample": filters[pre.resample], "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean, "image_std": std}
    if pre.center_crop or pre.resize_mode == "shortest":
        out.update(image_processor_type="BitImageProcessor", do_center_crop=pre.center_crop,
                   crop_size={"height": S, "width": S}, do_convert_rgb=True)
    else:
        out["image_processor_type"] = "ViTImageProcessor"
    return out
