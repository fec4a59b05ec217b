"""Softmax cross-entropy with optional label smoothing, mean over the batch."""
from __future__ import annotations

from .. import backend


def cross_entropy_forward(logits, labels, smoothing: float = 0.0):
    """loss = -(1/B) sum_b sum_k t_bk log softmax(z_b)_k, t = (1 - eps) onehot(y) + eps / K.
    d: dz = (softmax(z) - t) / B."""
    xp = backend.xp_of(logits)
    B, K = logits.shape
    if labels.shape != (B,):
        raise ValueError(f"labels have shape {labels.shape}, expected ({B},) to match logits {logits.shape}")
    if labels.dtype.kind not in "iu" or (B and (int(labels.min()) < 0 or int(labels.max()) >= K)):
        raise ValueError(f"labels must be integers in [0, {K}) (got dtype {labels.dtype}, "
                         f"range [{labels.min()}, {labels.max()}]); check num_classes and the dataset")
    z = logits - logits.max(1, keepdims=True)             # (B, K)
    logp = z - xp.log(xp.exp(z).sum(1, keepdims=True))    # (B, K) log softmax
    rows = xp.arange(B)
    nll = -logp[rows, labels]                             # (B,)
    loss = nll if smoothing == 0.0 else (1.0 - smoothing) * nll - smoothing * logp.mean(1)
    return float(loss.mean()), (logp, labels, smoothing)


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
