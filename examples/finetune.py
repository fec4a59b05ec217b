"""Fine-tune a pretrained ViT on an image folder.

    python examples/finetune.py --model ViT-Ti_16.npz --data DIR --image-size 224 --head-only
    python examples/finetune.py --model vit-base-patch16-224/ --data DIR --epochs 3
    python examples/finetune.py --model runs/mnist/best.npz --data DIR --epochs 5
    python examples/finetune.py --help                  # every flag

--model takes a minivit checkpoint, a Google (vit_jax) .npz, or a transformers or timm folder
(config.json + model.safetensors). DIR holds one sub-folder per class (DIR/<class>/*.png|.jpg|
.npy), or DIR/train/<class> and DIR/test/<class>. The run leaves last.npz, best.npz,
metrics.jsonl, config.json and curves.png in --out (runs/finetune); classify new images with
minivit-predict --model runs/finetune/best.npz. The command is minivit/cli/finetune.py.
"""
from minivit.cli.finetune import entry, main  # noqa: F401

if __name__ == "__main__":
    entry()
