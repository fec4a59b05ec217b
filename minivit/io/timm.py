"""timm's VisionTransformer layout (vit_*.augreg*, deit_*, deit3_*, *.mae, *.dino, *_dinov2,
*_reg4_*): a folder of config.json + model.safetensors as timm's push_to_hub writes it.

    patch_embed.proj.{weight (D, C, p, p), bias}                 patch_embed (conv)
    cls_token (1, 1, D), dist_token (1, 1, D) (deit *_distilled), reg_token (1, R, D)
    pos_embed (1, T' + P, D): T' = 0 with no_embed_class (deit3, *_reg*), else the class tokens
    blocks.{i}.norm1, attn.qkv (3D, D), attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma
    norm (pool 'token', or 'avg' without fc_norm) | fc_norm (pool 'avg': mean, then norm)
    head (K, D), head_dist (distilled)

config.json: {"architecture": "vit_base_patch16_224", "num_classes", "global_pool",
"model_args": {...}, "pretrained_cfg": {"input_size", "interpolation", "crop_pct", "crop_mode",
"mean", "std", ...}, "label_names": [...]}. The tensors do not record the head count: it comes
from model_args (num_heads), else the size the architecture names (config.SIZES: tiny 3,
small 6, medium 8, base 12, large, huge, giant 16), else heads= must be given. timm's
defaults: LayerNorm eps 1e-6, exact GELU; timm resamples position tables bicubically with
antialiasing.
"""
from __future__ import annotations

import dataclasses
import math
import re
import warnings

from ..config import SIZES, Preprocessing, ViTConfig
from ..errors import UserError
from .hf import IMAGENET_MEAN, IMAGENET_STD, class_names_of
from .layout import (MAX_SIDE, Layout, block_count, check_json, dims, key_table, make_config,
                     mlp_ratio_for, to_layout)

__all__ = ["timm_table", "timm_config", "timm_preprocessing", "timm_layout", "to_timm",
           "TIMM_RESAMPLE", "timm_heads"]

BLOCK = {"norm1.w": ("same", "norm1.weight"), "norm1.b": ("same", "norm1.bias"),
         "attn.qkv.w": ("linear", "attn.qkv.weight"), "attn.qkv.b": ("same", "attn.qkv.bias"),
         "attn.proj.w": ("linear", "attn.proj.weight"), "attn.proj.b": ("same", "attn.proj.bias"),
         "ls1.g": ("same", "ls1.gamma"), "norm2.w": ("same", "norm2.weight"),
         "norm2.b": ("same", "norm2.bias"), "mlp.fc1.w": ("linear", "mlp.fc1.weight"),
         "mlp.fc1.b": ("same", "mlp.fc1.bias"), "mlp.fc2.w": ("linear", "mlp.fc2.weight"),
         "mlp.fc2.b": ("same", "mlp.fc2.bias"), "ls2.g": ("same", "ls2.gamma")}
TOP = {"patch_embed.w": ("conv", "patch_embed.proj.weight"),
       "patch_embed.b": ("same", "patch_embed.proj.bias"), "cls_token": ("same", "cls_token"),
       "dist_token": ("same", "dist_token"), "reg_tokens": ("same", "reg_token"),
       "pos_embed": ("same", "pos_embed"), "head.w": ("linear", "head.weight"),
       "head.b": ("same", "head.bias"), "head_dist.w": ("linear", "head_dist.weight"),
       "head_dist.b": ("same", "head_dist.bias")}
TIMM_RESAMPLE = dict(method="bicubic", align_corners=False, antialias=True)
PRETRAINED_SCHEMA = {   # the JSON types of the pretrained_cfg entries read here (check_json)
    "input_size": "sides", "crop_pct": "number", "crop_mode": "str", "mean": "numbers",
    "std": "numbers", "interpolation": "str?", "label_names": "list?"}
CONFIG_SCHEMA = {   # ... and of config.json (a config without pretrained_cfg holds them itself)
    "architecture": "str", "num_classes": "int", "global_pool": "str", "label_names": "list?",
    "layer_norm_eps": "number",
    "model_args": {"num_heads": "int", "no_embed_class": "bool?", "global_pool": "str",
                   "act_layer": "str?", "init_values": "number?", "qkv_bias": "bool?",
                   "class_token": "bool?"},
    "pretrained_cfg": PRETRAINED_SCHEMA, **PRETRAINED_SCHEMA}
UNSUPPORTED = {"qk_norm": "qk-norm attention", "pre_norm": "a pre-norm (CLIP) stem",
               "attn_pool": "attention pooling ('map')", "mlp_layer": "a custom MLP (SwiGLU)",
               "norm_layer": "a custom norm layer", "embed_layer": "a custom patch embedding"}


# ---- layout -------------------------------------------------------------------------------------
def timm_table(cfg: ViTConfig) -> dict:
    """{minivit key: (transform, timm key)} for cfg; the final norm is fc_norm with cfg.fc_norm."""
    norm = "fc_norm" if cfg.fc_norm else "norm"
    top = {**TOP, "norm.w": ("same", f"{norm}.weight"), "norm.b": ("same", f"{norm}.bias")}
    return key_table(cfg, top, BLOCK, "blocks.{}.", "timm's VisionTransformer")


def timm_heads(conf: dict, D: int, overrides: dict) -> int:
    """The head count: heads=, model_args['num_heads'], else the architecture's size name."""
    if "heads" in overrides:
        return overrides.pop("heads")
    args = conf.get("model_args") or {}
    if "num_heads" in args:
        return int(args["num_heads"])
    arch = conf.get("architecture", "")
    for size in re.findall(r"(?:^|_)([a-z]+)(?=_)", arch):
        if size in SIZES and SIZES[size]["dim"] == D:           # config.SIZES, the named widths
            return SIZES[size]["heads"]
    raise UserError(f"timm weights do not record the head count and the architecture "
                    f"{arch or '(none)'!r} does not name a known size with width {D}: pass "
                    f"heads= (tiny 3, small 6, base 12, large and huge 16)")


def timm_config(conf: dict, arrays: dict, **overrides) -> ViTConfig:
    """The ViTConfig of timm tensors: shapes from the tensors, the head count and pooling from
    config.json (model_args, global_pool), timm's eps 1e-6 and exact GELU; overrides win."""
    args = dict(conf.get("model_args") or {})
    for k, what in UNSUPPORTED.items():
        if args.get(k):
            raise UserError(f"model_args {k}={args[k]!r}: {what} is not supported by minivit")
    if args.get("qkv_bias") is False or args.get("class_token") is False and \
            args.get("global_pool", "token") == "token":
        raise UserError("attention without qkv biases and CLS pooling without a CLS token "
                        "are not supported")
    if "patch_embed.proj.weight" not in arrays or "pos_embed" not in arrays:
        raise UserError("not a timm VisionTransformer: no patch_embed.proj.weight / pos_embed")
    D, C, p, p2 = dims(arrays, "patch_embed.proj.weight", 4)
    T = int("cls_token" in arrays) + int("dist_token" in arrays)
    R = dims(arrays, "reg_token", 3)[1] if "reg_token" in arrays else 0
    rows = dims(arrays, "pos_embed", 3)[1]
    no_embed_class = args.get("no_embed_class")
    if no_embed_class is None:                  # the table's size says which one it is
        no_embed_class = T > 0 and math.isqrt(rows) ** 2 == rows
    if not no_embed_class and R:
        raise UserError("register tokens with positions (no_embed_class=False) are not "
                        "supported; timm's *_reg* models use no_embed_class=True")
    prefix = 0 if no_embed_class else T + R
    grid = math.isqrt(max(rows - prefix, 0))
    if grid * grid != rows - prefix or grid == 0 or p != p2:
        raise UserError(f"pos_embed {arrays['pos_embed'].shape} is not {prefix} prefix rows + "
                        f"a square grid")
    pool = args.get("global_pool", conf.get("global_pool", "token" if T else "avg"))
    if pool not in ("token", "avg"):
        raise UserError(f"global_pool={pool!r}: minivit pools 'token' or 'avg'")
    act = args.get("act_layer")
    if act not in (None, "gelu", "gelu_tanh") and "gelu" not in overrides:
        raise UserError(f"act_layer={act!r}: minivit has GELU (exact or tanh); pass gelu=")
    heads = timm_heads(conf, D, overrides)
    fields = dict(
        image_size=grid * p, patch_size=p, in_channels=C, dim=D, heads=heads,
        depth=block_count(arrays, "blocks."),
        mlp_ratio=mlp_ratio_for(D, dims(arrays, "blocks.0.mlp.fc1.weight", 2)[0])
        if "blocks.0.mlp.fc1.weight" in arrays else 4.0,
        num_classes=dims(arrays, "head.weight", 2)[0] if "head.weight" in arrays else 0,
        pool="cls" if pool == "token" else "mean", fc_norm="fc_norm.weight" in arrays,
        layer_scale=float(args.get("init_values") or 1e-5)
        if "blocks.0.ls1.gamma" in arrays else None,
        num_registers=R, distilled="dist_token" in arrays, class_token="cls_token" in arrays,
        pos_embed_cls=not no_embed_class, gelu="tanh" if act == "gelu_tanh" else "erf",
        eps=float(conf.get("layer_norm_eps", 1e-6)))
    return make_config(fields, overrides)


def timm_preprocessing(conf: dict, cfg: ViTConfig) -> Preprocessing:
    """pretrained_cfg as a Preprocessing: resize the shorter side to floor(S / crop_pct) (a
    square of that size with crop_mode 'squash'), center-crop S, normalize."""
    pc = conf.get("pretrained_cfg")
    pc = conf if pc is None else pc
    C = cfg.in_channels
    size = pc.get("input_size", [C, cfg.image_size, cfg.image_size])
    if len(size) != 3 or size[1] != size[2]:
        raise UserError(f"input_size {size}: minivit takes square inputs [C, S, S]")
    S = int(size[1])
    mode = pc.get("crop_mode", "center")
    if mode not in ("center", "squash"):
        raise UserError(f"crop_mode={mode!r}: minivit crops 'center' or 'squash'")
    crop_pct = float(pc.get("crop_pct", 0.875))
    if not 0 < crop_pct or math.floor(S / crop_pct) > MAX_SIDE:
        raise UserError(f"crop_pct={crop_pct}: the fraction of the resized image that is "
                        f"cropped must be positive (and resize to at most {MAX_SIDE} pixels)")
    resample = pc.get("interpolation", "bicubic")
    if resample not in ("nearest", "bilinear", "bicubic"):
        resample = "bicubic"
    names = pc.get("label_names", conf.get("label_names"))
    names = list(names) if names is not None and len(names) == cfg.num_classes else None
    if names is None:
        names = class_names_of(conf, cfg.num_classes)
    mean, std = pc.get("mean", IMAGENET_MEAN), pc.get("std", IMAGENET_STD)
    mean, std = (v if isinstance(v, list) else [v] for v in (mean, std))
    if C != 3 and len(mean) == 3:                     # timm's ImageNet defaults, other channels
        mean, std = [mean[0]] * C, [std[0]] * C
    return Preprocessing(mean=mean, std=std, image_size=S, channels=C,
                         class_names=names, resize_size=int(math.floor(S / crop_pct)),
                         resize_mode="shortest" if mode == "center" else "square",
                         center_crop=True, resample=resample)


def timm_layout(arrays: dict, conf: dict, pre_conf: dict | None = None, **overrides) -> Layout:
    """The Layout of timm tensors and config.json (timm has no preprocessor_config.json: its
    pretrained_cfg says how to prepare images)."""
    check_json(conf, CONFIG_SCHEMA, "config.json")
    cfg = timm_config(conf, arrays, **overrides)
    return Layout(cfg, timm_table(cfg), arrays, timm_preprocessing(conf, cfg),
                  "timm's VisionTransformer layout",
                  conf.get("architecture", "timm VisionTransformer"), TIMM_RESAMPLE)


# ---- writing ------------------------------------------------------------------------------------
def to_timm(params: dict, cfg: ViTConfig, pre: Preprocessing | None, pos_table=None):
    """(tensors, config.json dict) that timm.create_model('local-dir:FOLDER') builds with no
    missing or unexpected keys. Registers next to a table with class rows (transformers' DINOv2
    layout) become timm's no_embed_class form: the class rows are added into the class tokens,
    the same function. A fixed sincos table is written as a learned one."""
    if cfg.representation_size:
        raise UserError("timm's VisionTransformer has no tanh pre-logits layer: save with "
                        "format='google' (or format='hf' for a headless ViTModel pooler)")
    params = dict(params)
    if "pos_embed" not in params:
        params["pos_embed"] = pos_table
    out_cfg = dataclasses.replace(cfg, pos_embed="learned")
    if cfg.num_registers and cfg.pos_embed_cls and cfg.num_class_tokens:
        T = cfg.num_class_tokens
        pos = params["pos_embed"]
        for j, name in enumerate(n for n in ("cls_token", "dist_token") if n in params):
            params[name] = params[name] + pos[:, j:j + 1]
        params["pos_embed"] = pos[:, T:]
        out_cfg = dataclasses.replace(out_cfg, pos_embed_cls=False)
    if cfg.eps != 1e-6:
        warnings.warn(f"timm builds its LayerNorms with eps=1e-6, this model uses eps={cfg.eps}: "
                      f"timm's outputs will differ slightly (minivit reads the eps back from "
                      f"config.json)", stacklevel=3)
    tensors = to_layout(params, timm_table(out_cfg), out_cfg)
    return tensors, timm_json(out_cfg, pre)


def crop_pct_for(S: int, resize: int) -> float:
    """A short crop_pct for which timm's floor(S / crop_pct) gives back `resize` exactly."""
    for digits in (4, 6, 8):
        pct = round(S / resize, digits)
        if math.floor(S / pct) == resize:
            return pct
    return S / (resize + 0.5)


def timm_json(cfg: ViTConfig, pre: Preprocessing | None) -> dict:
    """config.json: a generic architecture with every shape in model_args."""
    arch = ("deit_base_distilled_patch16_224" if cfg.distilled else "vit_base_patch16_224")
    pool = "token" if cfg.pool == "cls" else "avg"
    args = dict(img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_channels,
                num_classes=cfg.num_classes, embed_dim=cfg.dim, depth=cfg.depth,
                num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True,
                class_token=cfg.class_token, no_embed_class=not cfg.pos_embed_cls,
                reg_tokens=cfg.num_registers, init_values=cfg.layer_scale, global_pool=pool,
                fc_norm=cfg.fc_norm, act_layer="gelu" if cfg.gelu == "erf" else "gelu_tanh")
    C, S = cfg.in_channels, cfg.image_size
    pc = {"input_size": [C, S, S], "fixed_input_size": True, "num_classes": cfg.num_classes,
          "first_conv": "patch_embed.proj",
          "classifier": ["head", "head_dist"] if cfg.distilled else "head"}
    if pre is not None:
        mean = pre.mean * C if len(pre.mean) == 1 else pre.mean
        std = pre.std * C if len(pre.std) == 1 else pre.std
        pc.update(interpolation=pre.resample, mean=list(mean), std=list(std),
                  crop_pct=crop_pct_for(S, pre.resize_size or S),
                  crop_mode="center" if pre.resize_mode == "shortest" else "squash")
    conf = {"architecture": arch, "num_classes": cfg.num_classes, "num_features": cfg.dim,
            "global_pool": pool, "model_args": args, "pretrained_cfg": pc}
    if pre is not None and pre.class_names is not None and len(pre.class_names) == cfg.num_classes:
        conf["label_names"] = list(pre.class_names)
    if cfg.eps != 1e-6:
        conf["layer_norm_eps"] = cfg.eps                  # for minivit; timm uses 1e-6
    return conf

