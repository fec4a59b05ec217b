"""`python -m minivit.train`: the training command (minivit/cli/train.py). The loop itself lives
in minivit/training/; its main names are re-exported here for scripts that import them."""
from minivit.cli.train import main  # noqa: F401
from minivit.training.loop import TrainOptions, fit, train_step  # noqa: F401

if __name__ == "__main__":
    from minivit.cli.train import entry
    entry()
