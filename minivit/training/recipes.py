"""The MNIST recipes the training command offers: its model sizes (named models of config.MODELS)
and presets (epochs, learning rate), measured in the README."""
from __future__ import annotations

from ..config import ViTConfig, model_config
from ..errors import UserError

# `minivit-train --model NAME`: the size, as a named model (28 x 28 x 1 images, 10 classes)
MODELS = {"tiny": "mnist-tiny", "default": "mnist", "wide": "mnist-p4"}
PRESETS = {   # measured in the README's MNIST table (2-core CPU, two processes)
    "default": dict(model="default", epochs=12),                      # >= 98.5%, ~3.5 minutes
    "best": dict(model="default", epochs=17, lr=3e-3, warmup_epochs=0.5),   # 99.1%, < 5 minutes
    "long": dict(model="default", epochs=50),                         # the most in ~15 minutes
}


def mnist_config(model: str = "default", **overrides) -> ViTConfig:
    """The ViTConfig of an MNIST model size (MODELS), with overrides (dropout=, dtype=, ...)."""
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    return model_config(MODELS[model], **overrides)
