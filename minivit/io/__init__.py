"""Weights in and out, one file per layout:

    checkpoint.py   minivit's own .npz checkpoints (params, optimizer state, typed header)
    google.py       google-research/vision_transformer (vit_jax) .npz files

`python -m minivit.io` (or `minivit-io`) exports and describes files (minivit/cli/io.py).
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .google import (check_google_arrays, from_google, google_config, google_shapes,
                     load_google_npz, read_google_npz, save_google_npz, to_google)

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "load_google_npz",
           "save_google_npz", "read_google_npz", "google_config", "google_shapes",
           "check_google_arrays", "from_google", "to_google"]
