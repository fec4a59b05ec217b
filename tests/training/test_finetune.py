"""training/finetune.py: which keys are trainable or frozen, and that an optimizer leaves the
frozen ones alone."""

import numpy as np
import pytest

from minivit import ViT, ViTConfig
from minivit.layers import cross_entropy_backward, cross_entropy_forward
from minivit.optim import AdamW
from minivit.training.finetune import frozen_keys, trainable_keys

from conftest import images, randomize_params

SMALL = dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2, heads=2,
             mlp_ratio=1.5, dtype="float64")


def test_trainable_and_frozen_keys():
    model = ViT(ViTConfig(**SMALL, representation_size=5))
    assert trainable_keys(model, head_only=True) == ["head.w", "head.b"]
    assert trainable_keys(model) == list(model.params)
    frozen = frozen_keys(model, head_only=True)
    assert frozen == set(model.params) - {"head.w", "head.b"} and "pre_logits.w" in frozen
    assert model.head_keys() == ["head.w", "head.b"]
    assert frozen_keys(model, head_only=False) == set()


def test_frozen_params_unchanged_by_optimizer():
    model = ViT(ViTConfig(**SMALL))
    randomize_params(model)                                   # a non-zero head, so the body gets grads
    frozen = frozen_keys(model, head_only=True)
    try:
        opt = AdamW(model.params, lr=0.05, weight_decay=0.1, frozen=frozen,
                    decay=model.decay_keys())
    except TypeError as e:
        pytest.skip(f"optimizer has no `frozen` argument yet ({e})")
    before = {k: v.copy() for k, v in model.params.items()}
    x, labels = images(4, 2, 8), np.array([0, 1, 2, 0])
    for _ in range(3):
        _, cache = cross_entropy_forward(model.forward(x, train=True), labels)
        model.backward(cross_entropy_backward(cache))
        assert model.grads["blocks.0.attn.qkv.w"].any()                 # frozen params do get grads
        opt.step(model.grads, lr=0.05)
    for k in model.params:
        changed = not np.array_equal(model.params[k], before[k])
        assert changed == (k not in frozen), k


def test_head_only_trains_both_heads_of_a_distilled_model():
    """--head-only on a DeiT with a distillation head: reset_head zeroes both heads, and both
    must train (head_dist once stayed frozen at the zeros, since only head.* counted as head)."""
    from minivit.training import loop
    model = ViT(ViTConfig(**SMALL, distilled=True))
    randomize_params(model)
    model.reset_head(4)
    assert trainable_keys(model, head_only=True) == ["head.w", "head.b", "head_dist.w",
                                                     "head_dist.b"]
    model.freeze(frozen_keys(model, head_only=True))
    opts = loop.TrainOptions(lr=0.05, clip=1.0)
    opt = loop.make_optimizer(model, opts)
    before = {k: v.copy() for k, v in model.params.items()}
    x, labels = images(4, 2, 8), np.array([0, 1, 2, 3])
    for _ in range(2):
        loop.train_step(model, opt, x, labels, 0.05, opts)
    for k in model.params:
        changed = not np.array_equal(model.params[k], before[k])
        assert changed == k.startswith(("head.", "head_dist.")), k
