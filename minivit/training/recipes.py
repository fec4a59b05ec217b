"""The MNIST recipes the training command offers: model sizes and presets (epochs), measured in
benchmarks/README.md and the README."""
from __future__ import annotations

from ..config import ViTConfig

# Model sizes for 28 x 28 x 1 images; --model picks one.
MODELS = {
    "tiny": dict(patch_size=7, dim=32, depth=2, heads=2, mlp_ratio=2.0),
    "default": dict(patch_size=7, dim=64, depth=6, heads=4, mlp_ratio=2.0),
    "wide": dict(patch_size=4, dim=128, depth=6, heads=4, mlp_ratio=2.0),
}
PRESETS = {   # measured in the README's MNIST table (2-core CPU, two processes)
    "default": dict(model="default", epochs=12),                      # >= 98.5%, ~3.5 minutes
    "best": dict(model="default", epochs=17, lr=3e-3, warmup_epochs=0.5),   # 99.1%, < 5 minutes
    "long": dict(model="default", epochs=50),                         # the most in ~15 minutes
}


def mnist_config(model: str = "default", **overrides) -> ViTConfig:
    """The ViTConfig of a named MNIST model size (28 x 28 x 1 images, 10 classes)."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    return ViTConfig(**MODELS[model], image_size=28, in_channels=1, num_classes=10, **overrides)
