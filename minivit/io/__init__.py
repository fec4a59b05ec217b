"""Weights in and out, one file per layout:

    checkpoint.py   minivit's own .npz checkpoints (params, optimizer state, typed header)
    google.py       google-research/vision_transformer (vit_jax) .npz files
    hf.py           transformers' ViT, DeiT and DINOv2 (config.json + model.safetensors)
    timm.py         timm's VisionTransformer (config.json + model.safetensors)
    pretrained.py   load_pretrained / save_pretrained: any of them, found from the contents
    layout.py       what google.py, hf.py and timm.py share: the key-table transforms, the
                    one override check and the one path from a file's tensors to a model
    safetensors_file.py   checked safetensors reading and writing; pickle files refused
    preprocess.py   a checkpoint's preprocessing (resize, crop, normalize) applied to images

`python -m minivit.io` (or `minivit-io`) exports and describes files (minivit/cli/io.py).
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .google import (GoogleNpzError, check_google_arrays, from_google, google_config,
                     google_shapes, load_google_npz, read_google_npz, save_google_npz, to_google)
from .pretrained import PretrainedError, describe_pretrained, load_pretrained, save_pretrained
from .safetensors_file import SafetensorsError, read_safetensors, write_safetensors

__all__ = ["CheckpointError", "GoogleNpzError", "load_checkpoint", "save_checkpoint", "load_google_npz",
           "save_google_npz", "read_google_npz", "google_config", "google_shapes",
           "check_google_arrays", "from_google", "to_google", "load_pretrained", "save_pretrained",
           "describe_pretrained", "PretrainedError", "SafetensorsError", "read_safetensors",
           "write_safetensors"]
