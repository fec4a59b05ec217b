"""Attention maps of a trained minivit on MNIST test images, as a PNG grid.

    python examples/attention_maps.py --model runs/mnist/best.npz --out attention.png
    python examples/attention_maps.py --quick            # tiny random model, synthetic digits
    python examples/attention_maps.py --help             # every flag

One row per image: the input, then each layer's CLS-token attention (mean over heads, the CLS
query row over the patches, upsampled to the image) and the attention rollout over all layers
(Abnar & Zuidema 2020). Without matplotlib the numbers are printed and no PNG is written.
The work is in minivit/analysis/; the command in minivit/cli/attention.py.
"""
from minivit.cli.attention import entry, main  # noqa: F401

if __name__ == "__main__":
    entry()
