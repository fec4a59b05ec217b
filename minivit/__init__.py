"""minivit: a Vision Transformer in plain NumPy (CuPy optional) with hand-written backward passes.

The engine (backend, config, params, layers/ (the reference pairs), kernels/ (the same functions,
fast), model, optim, gradcheck, resample, parallel/) knows nothing of files, datasets or command
lines; data/ and io/ stand on it; training/ uses all three;
cli/ holds the commands.
"""
from .config import Preprocessing, ViTConfig
from .model import ViT

__version__ = "0.2.0"
__all__ = ["ViT", "ViTConfig", "Preprocessing", "load_pretrained", "save_pretrained",
           "__version__"]


def __getattr__(name):
    """load_pretrained / save_pretrained (minivit.io), imported on first use."""
    if name in ("load_pretrained", "save_pretrained"):
        from . import io
        return getattr(io, name)
    raise AttributeError(f"module 'minivit' has no attribute {name!r}")
