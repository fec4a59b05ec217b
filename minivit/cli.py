"""Running a command-line entry point: user errors print one clear message, not a traceback."""
from __future__ import annotations

import os
import sys


def run(main, argv=None):
    """Call main(argv). A ValueError/TypeError/FileNotFoundError/RuntimeError/ArithmeticError
    (bad data, bad checkpoint, bad flag, no GPU, a diverging loss) prints 'error: <message>' and exits with status 2;
    MINIVIT_DEBUG=1 shows the full traceback instead."""
    try:
        return main(argv)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, ArithmeticError) as e:
        if os.environ.get("MINIVIT_DEBUG") == "1":
            raise
        print(f"error: {e}\n(set MINIVIT_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(2)
