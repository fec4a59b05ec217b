"""ParamDict: named parameter arrays that are views into one flat vector.

    params = ParamDict.zeros(cfg.param_shapes(), "float32", np)
    params["blocks.0.attn.qkv.w"]        # (D, 3D) view of params.flat[a:b]
    params.flat                          # (P,) every parameter, in key order

The model keeps its params and its grads this way, so whole-model work runs over one vector:
gradient clipping is one dot product, AdamW a dozen vector operations, and an all-reduce one call.
Assigning `params[name] = value` copies value into the view (same shape), so the dict and the
vector never part ways; shapes change only by building a new ParamDict (the model's reset_head
and set_image_size do).
"""
from __future__ import annotations

import numpy as np


class ParamDict(dict):
    """name -> view into self.flat; self.offsets[name] = (start, stop) in self.flat."""

    def __init__(self, flat, shapes: dict):
        super().__init__()
        self.flat = flat                                   # (P,)
        self.offsets = {}
        i = 0
        for k, shape in shapes.items():
            n = int(np.prod(shape, dtype=np.int64))
            dict.__setitem__(self, k, flat[i:i + n].reshape(shape))
            self.offsets[k] = (i, i + n)
            i += n
        if i != flat.size:
            raise ValueError(f"shapes cover {i} numbers but the flat vector holds {flat.size}")

    @classmethod
    def zeros(cls, shapes: dict, dtype, xp=np) -> "ParamDict":
        """A zero-filled ParamDict with these names and shapes (in this order)."""
        size = sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
        return cls(xp.zeros(size, dtype=dtype), shapes)

    @classmethod
    def from_arrays(cls, arrays: dict, dtype=None, xp=None) -> "ParamDict":
        """A ParamDict holding copies of arrays (same names, order and shapes)."""
        first = next(iter(arrays.values()))
        xp = xp if xp is not None else _xp_of(first)
        out = cls.zeros({k: tuple(v.shape) for k, v in arrays.items()},
                        dtype if dtype is not None else first.dtype, xp)
        for k, v in arrays.items():
            out[k] = v
        return out

    def __setitem__(self, name, value):
        if name not in self:
            raise KeyError(f"{name!r} is not a parameter of this model (a ParamDict's names are "
                           f"fixed; build a new one to add parameters)")
        view = dict.__getitem__(self, name)
        if tuple(value.shape) != tuple(view.shape):
            raise ValueError(f"{name}: cannot assign shape {tuple(value.shape)} to a parameter of "
                             f"shape {tuple(view.shape)}; shapes change only through the model "
                             f"(reset_head, set_image_size)")
        view[...] = _xp_of(view).asarray(value)             # a host array moves to the device

    def _fixed(self, *args, **kwargs):
        raise TypeError("a ParamDict's names are fixed (they are views into one flat vector); "
                        "build a new ParamDict to add or remove parameters")

    __delitem__ = pop = popitem = clear = setdefault = _fixed

    def update(self, *args, **kwargs):
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def runs(self, keys) -> list:
        """Maximal (start, stop) ranges of self.flat covered by `keys` (in key order)."""
        out = []
        for k in self:
            if k not in keys:
                continue
            a, b = self.offsets[k]
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
        return out


def _xp_of(a):
    from . import backend
    return backend.xp_of(a)
