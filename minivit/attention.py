"""`python -m minivit.attention`: the attention-maps command (minivit/cli/attention.py)."""
from minivit.cli.attention import main  # noqa: F401

if __name__ == "__main__":
    from minivit.cli.attention import entry
    entry()
