"""`python -m minivit.evaluate`: the evaluation command (minivit/cli/evaluate.py). The functions
live in minivit/training/evaluate.py; they are re-exported here for scripts that import them."""
from minivit.cli.evaluate import main  # noqa: F401
from minivit.training.evaluate import (confusion_matrix, logits_of, predict,  # noqa: F401
                                       report, softmax)

if __name__ == "__main__":
    from minivit.cli.evaluate import entry
    entry()
