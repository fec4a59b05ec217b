"""Fine-tune a pretrained ViT (Google .npz or minivit checkpoint) on an image folder.

    python examples/finetune.py --npz ViT-Ti_16.npz --data DIR --image-size 224 --head-only
    python examples/finetune.py --checkpoint runs/mnist/best.npz --data DIR --epochs 5
    python examples/finetune.py --help                  # every flag

DIR holds one sub-folder per class (DIR/<class>/*.png|.jpg|.npy), or DIR/train/<class> and
DIR/test/<class>. The run leaves last.npz, best.npz, metrics.jsonl, config.json and curves.png
in --out (runs/finetune); classify new images with python -m minivit.predict --checkpoint.
"""
from minivit.cli.finetune import entry, main  # noqa: F401

if __name__ == "__main__":
    entry()
