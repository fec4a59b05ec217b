"""`python -m minivit.predict`: the prediction command (minivit/cli/predict.py)."""
from minivit.cli.predict import main  # noqa: F401

if __name__ == "__main__":
    from minivit.cli.predict import entry
    entry()
