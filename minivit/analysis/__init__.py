"""Looking inside a trained model: attention.py computes per-layer CLS attention and attention
rollout; render.py draws them as a PNG grid (needs matplotlib)."""
from .attention import attention_maps, attention_rollout, cls_maps, upsample

__all__ = ["attention_maps", "attention_rollout", "cls_maps", "upsample"]
