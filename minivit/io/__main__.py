"""python -m minivit.io: see minivit/cli/io.py."""
from minivit.cli.io import entry

entry()
