"""Train a small ViT on MNIST with minivit.

    python examples/train_mnist.py                  # the default recipe (about 98.5% or better)
    python examples/train_mnist.py --preset best    # the longer recipe (about 99%)
    python examples/train_mnist.py --device gpu     # the same on CuPy
    python examples/train_mnist.py --help           # every flag

The data is downloaded to ~/.cache/minivit/mnist (or --data DIR / $MINIVIT_DATA) and verified;
the run leaves last.npz, best.npz, metrics.jsonl, config.json and curves.png in --out (runs/mnist).
"""
from minivit.cli.train import entry, main  # noqa: F401

if __name__ == "__main__":
    entry()
