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
PRESETS = {
    "default": dict(model="default", epochs=12),
    "best": dict(model="default", epochs=40),
}


def mnist_config(model: str = "default", **overrides) -> ViTConfig:
    """The ViTConfig of a named MNIST model size (28 x 28 x 1 images, 10 classes)."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    return ViTConfig(**MODELS[model], image_size=28, in_channels=1, num_classes=10, **overrides)
