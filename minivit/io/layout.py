"""What the PyTorch-side layouts (io/hf.py, io/timm.py) share: a key table from minivit's
parameter names to the file's tensor names, each entry with one shape transform:

    same     the same array                          cls_token, biases, LayerNorm, LayerScale
    linear   torch Linear weight (out, in) = w.T     our linear weights are (in, out)
    conv     torch Conv2d weight (D, C, p, p)        our patch_embed.w (p*p*C, D), row
                                                     (i*p + j)*C + c (layers.embed.patchify)
    qkv      three (out, in) weights [q, k, v]       our attn.qkv.w (D, 3D) = [q | k | v]
    qkv_b    three (D,) biases                       our attn.qkv.b (3D,)

A table is {minivit key: (transform, file key)} (a tuple of three file keys for qkv and
qkv_b). from_layout / to_layout apply it both ways and check_layout lists every missing,
unknown, misshapen and non-float tensor at once, like io/google.py.
"""
from __future__ import annotations

import numpy as np

from ..config import ViTConfig


def _conv_load(a, cfg):
    D, C, p, _ = a.shape
    return a.transpose(2, 3, 1, 0).reshape(p * p * C, D)             # (p*p*C, D)


def _conv_save(w, cfg):
    p, C, D = cfg.patch_size, cfg.in_channels, cfg.dim
    return w.reshape(p, p, C, D).transpose(3, 2, 0, 1)               # (D, C, p, p)


def _split3(v, axis):
    return tuple(np.split(v, 3, axis=axis))


# transform: (file arrays -> ours, ours -> file arrays, our shape -> file shape(s))
TRANSFORMS = {
    "same": (lambda a, cfg: a, lambda v, cfg: v, lambda s, cfg: s),
    "linear": (lambda a, cfg: a.T, lambda v, cfg: v.T, lambda s, cfg: s[::-1]),
    "conv": (_conv_load, _conv_save,
             lambda s, cfg: (cfg.dim, cfg.in_channels, cfg.patch_size, cfg.patch_size)),
    "qkv": (lambda a, cfg: np.concatenate([x.T for x in a], axis=1),        # (D, 3D)
            lambda v, cfg: tuple(x.T for x in _split3(v, 1)),                # 3 x (D, D)
            lambda s, cfg: ((s[1] // 3, s[0]),) * 3),
    "qkv_b": (lambda a, cfg: np.concatenate(a), lambda v, cfg: _split3(v, 0),
              lambda s, cfg: ((s[0] // 3,),) * 3),
}


def file_keys(entry) -> tuple:
    _, key = entry
    return key if isinstance(key, tuple) else (key,)


def layout_shapes(table: dict, cfg: ViTConfig) -> dict:
    """{file key: shape} the table expects for cfg, in table order."""
    ours = cfg.param_shapes()
    out = {}
    for k, (kind, key) in table.items():
        shape = TRANSFORMS[kind][2](ours[k], cfg)
        if isinstance(key, tuple):
            out.update(zip(key, shape))
        else:
            out[key] = tuple(shape)
    return out


def from_layout(arrays: dict, table: dict, cfg: ViTConfig) -> dict:
    """File-named host arrays (checked by check_layout) -> {minivit key: array}."""
    out = {}
    for k, (kind, key) in table.items():
        a = tuple(arrays[x] for x in key) if isinstance(key, tuple) else arrays[key]
        out[k] = TRANSFORMS[kind][0](a, cfg)
    return out


def to_layout(params: dict, table: dict, cfg: ViTConfig) -> dict:
    """{minivit key: host array} -> file-named contiguous arrays, in table order."""
    out = {}
    for k, (kind, key) in table.items():
        v = TRANSFORMS[kind][1](params[k], cfg)
        if isinstance(key, tuple):
            out.update(zip(key, v))
        else:
            out[key] = v
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def check_layout(arrays: dict, table: dict, cfg: ViTConfig, what: str,
                 ignored: tuple = ()) -> None:
    """Raise one ValueError listing every missing, unknown, misshapen or non-float tensor;
    `ignored` file keys (e.g. DINOv2's mask_token, used only in pre-training) may be present."""
    want = layout_shapes(table, cfg)
    missing = [k for k in want if k not in arrays]
    unknown = sorted(k for k in arrays if k not in want and k not in ignored)
    misshapen = [f"{k}: got {tuple(arrays[k].shape)}, expected {want[k]}" for k in want
                 if k in arrays and tuple(arrays[k].shape) != tuple(want[k])]
    nonfloat = [f"{k}: {arrays[k].dtype}" for k in want
                if k in arrays and arrays[k].dtype.kind != "f"]
    if not (missing or unknown or misshapen or nonfloat):
        return
    lines = [f"the tensors do not match {what} with patch={cfg.patch_size}, dim={cfg.dim}, "
             f"depth={cfg.depth}, mlp_dim={cfg.mlp_dim}, classes={cfg.num_classes}:"]
    for title, items in (("missing", missing), ("unknown", unknown), ("misshapen", misshapen),
                         ("non-float", nonfloat)):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12])
                         + (f" and {len(items) - 12} more" if len(items) > 12 else ""))
    lines.append("  the file holds another architecture (qk-norm, SwiGLU, hybrid and attention-"
                 "pool models are not supported), or it was edited")
    raise ValueError("\n".join(lines))


def mlp_ratio_for(D: int, F: int) -> float:
    """A ratio r with int(D * r) == F (ViTConfig computes the MLP width that way)."""
    r = F / D
    return r if int(D * r) == F else (F + 0.5) / D


def block_count(arrays: dict, prefix: str) -> int:
    """1 + the largest i of keys '<prefix><i>.'; 0 when there are none."""
    n = -1
    for k in arrays:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                n = max(n, int(head))
    return n + 1
