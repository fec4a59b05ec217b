"""Kept so that `from minivit.checkpoint import load_checkpoint` keeps working: the checkpoint
format lives in minivit/io/checkpoint.py."""
from .io.checkpoint import (FORMAT_VERSION, CheckpointError, load_checkpoint, read_checkpoint,
                            save_checkpoint)

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "read_checkpoint",
           "FORMAT_VERSION"]
