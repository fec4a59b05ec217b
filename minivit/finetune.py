"""`python -m minivit.finetune`: the fine-tuning command (minivit/cli/finetune.py)."""
from minivit.cli.finetune import main  # noqa: F401

if __name__ == "__main__":
    from minivit.cli.finetune import entry
    entry()
