"""Softmax cross-entropy with optional label smoothing, mean over the batch.

    cross_entropy_forward(logits, labels)   the checked mean loss, a host float
    cross_entropy_losses(logits, labels)    each image's loss (B,), left on the array's device
                                            and unchecked: for a trainer that checked its labels
                                            once (check_labels) and fetches the loss with the
                                            step's other numbers in one device-to-host copy
"""
from __future__ import annotations

from .. import backend
from ..errors import UserError


def check_labels(labels, num_classes: int, batch: int | None = None) -> None:
    """ValueError unless labels are integers in [0, num_classes) (of shape (batch,) if given).
    Reads the labels' range: one device sync for device arrays."""
    if batch is not None and labels.shape != (batch,):
        raise UserError(f"labels have shape {labels.shape}, expected ({batch},) to match the "
                        f"batch of {batch} logits")
    K = num_classes
    if labels.dtype.kind not in "iu" or (labels.size and (int(labels.min()) < 0
                                                          or int(labels.max()) >= K)):
        raise UserError(f"labels must be integers in [0, {K}) (got dtype {labels.dtype}, "
                        f"range [{labels.min()}, {labels.max()}]); check num_classes and the "
                        f"dataset")


def cross_entropy_losses(logits, labels, smoothing: float = 0.0):
    """Each image's loss l_b = -sum_k t_bk log softmax(z_b)_k, t = (1 - eps) onehot(y) + eps / K:
    (B,) on the logits' device, and the cache for the backward of their mean. The labels are not
    checked (check_labels): nothing here waits for the device."""
    xp = backend.xp_of(logits)
    B, K = logits.shape
    z = logits - logits.max(1, keepdims=True)             # (B, K)
    logp = z - xp.log(xp.exp(z).sum(1, keepdims=True))    # (B, K) log softmax
    rows = xp.arange(B)
    nll = -logp[rows, labels]                             # (B,)
    losses = nll if smoothing == 0.0 else (1.0 - smoothing) * nll - smoothing * logp.mean(1)
    return losses, (logp, labels, smoothing)


def cross_entropy_forward(logits, labels, smoothing: float = 0.0):
    """loss = (1/B) sum_b l_b (cross_entropy_losses), labels checked, as a host float.
    d: dz = (softmax(z) - t) / B."""
    check_labels(labels, logits.shape[1], logits.shape[0])
    losses, cache = cross_entropy_losses(logits, labels, smoothing)
    return float(losses.mean()), cache


def cross_entropy_backward(cache):
    logp, labels, smoothing = cache
    xp = backend.xp_of(logp)
    B, K = logp.shape
    dz = xp.exp(logp)                                     # (B, K) softmax
    dz[xp.arange(B), labels] -= 1.0 - smoothing
    if smoothing:
        dz -= smoothing / K
    dz /= B
    return dz
