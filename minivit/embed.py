"""Image features: the representation a model's classifier head reads, and every final-normed
token (`python -m minivit.embed`: the embed command, minivit/cli/embed.py).

    from minivit import load_pretrained
    from minivit.embed import features
    model = load_pretrained("dinov2-small/")              # no head needed (num_classes=0)
    f = features(model, x)                                # (B, D)
    f, tokens = features(model, x, tokens=True)           # (B, D), (B, N, D)

How the pieces relate, in minivit and in transformers (ViTModel, DeiTModel, Dinov2Model):

    model.forward_features(x)    the last block's output (B, N, D), BEFORE the final LayerNorm.
                                 transformers: hidden_states[-1] (output_hidden_states=True);
                                 not last_hidden_state, which is after the norm
    tokens                       LayerNorm(forward_features(x)) with the model's final norm
                                 (norm.w, norm.b): every token after the final norm, CLS first,
                                 then distillation and register tokens, then the patches in row
                                 order. transformers: last_hidden_state (B, N, D). timm:
                                 forward_features(x)
    features                     what the classifier head reads, computed as model.forward does
                                 it with the head taken away (num_classes=0):
                                   pool 'cls'           the final-normed CLS token = tokens[:, 0];
                                                        Dinov2Model's pooler_output, and
                                                        ViTForImageClassification's head input
                                                        (last_hidden_state[:, 0])
                                   pool 'mean'          the mean of the final-normed patch tokens
                                                        (class and register tokens left out)
                                   fc_norm             the mean of the patch tokens, then the norm
                                                        (timm's global_pool='avg' models); their
                                                        `tokens` are the un-normed last block
                                                        output, as timm's forward_features (its
                                                        norm is an Identity there)
                                   pre-logits           tanh(pooled @ W + b) (representation_size:
                                                        Google's ViT-B/16 with its pre-logits,
                                                        transformers' ViTModel pooler_output)
                                   distilled (DeiT)     the mean of the final-normed CLS and
                                                        distillation tokens

A model loaded from a checkpoint with a head (a classifier) and one without (num_classes=0)
give the same features; the head's weights are not used.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import backend
from .data.batches import normalize
from .layers import head_forward, layernorm_forward

__all__ = ["features", "features_of_images"]


def features(model, x, tokens: bool = False):
    """Features (B, D) of normalized images x (B, C, S, S) (the representation the head reads;
    (B, R) with a pre-logits layer); with tokens=True also every final-normed token (B, N, D).
    Inference only: nothing is cached for a backward pass. Arrays stay on the model's backend
    and in its dtype. See the module docstring for what each is in transformers and timm."""
    cfg = model.config
    t = model.forward_features(x)                            # (B, N, D), before the final norm
    headless = dataclasses.replace(cfg, num_classes=0)       # the head's input, not its logits
    pooled, _ = head_forward(t, model.params, headless)     # (B, D) | (B, R)
    if not tokens:
        return pooled
    if cfg.fc_norm:                                          # the norm acts on the pooled mean
        return pooled, t
    normed, _ = layernorm_forward(t, model.params["norm.w"], model.params["norm.b"], cfg.eps)
    return pooled, normed                                    # (B, D), (B, N, D)


def features_of_images(model, images: np.ndarray, mean, std, tokens: bool = False):
    """Host float32 features (M, D) [and tokens (M, N, D)] of uint8 images (M, C, S, S),
    normalized as x = (pixel / 255 - mean) / std; one forward pass for all of them (the caller
    batches)."""
    x = normalize(backend.asarray(images), model.config.dtype, mean, std)   # (M, C, S, S)
    out = features(model, x, tokens)
    if not tokens:
        return backend.to_numpy(out).astype(np.float32)
    return tuple(backend.to_numpy(a).astype(np.float32) for a in out)


if __name__ == "__main__":
    from minivit.cli.embed import entry
    entry()
