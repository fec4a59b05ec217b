"""The training-curve PNG (needs matplotlib, the `plot` extra; without it a note is printed)."""
from __future__ import annotations

from ..files import save_figure


def plot_curves(history: list, path: str) -> bool:
    """Loss and accuracy per epoch as a PNG (atomically: files.WriteError when it cannot be
    written); says so and returns False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the training-curve plot "
              "(pip install -e .[plot] to get it)")
        return False
    if not history:
        return False
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    a1.set_xlabel("epoch"), a1.set_ylabel("loss"), a1.legend(), a1.grid(alpha=0.3)
    a2.plot(ep, [h["train_acc"] for h in history], "o-", label="train accuracy")
    a2.plot(ep, [h["test_acc"] for h in history], "s-", label="test accuracy")
    a2.set_xlabel("epoch"), a2.set_ylabel("accuracy"), a2.legend(), a2.grid(alpha=0.3)
    fig.suptitle(f"best test accuracy {max(h['test_acc'] for h in history):.4f}")
    fig.tight_layout()
    save_figure(fig, path)
    return True
