"""minivit: a Vision Transformer in plain NumPy (CuPy optional) with hand-written backward passes."""
from .config import ViTConfig
from .model import ViT

__version__ = "0.1.0"
__all__ = ["ViT", "ViTConfig", "__version__"]
