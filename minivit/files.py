"""Writing files so that a crash never leaves half of one: every file minivit writes
(checkpoints, exports, downloads, metrics, plots) goes through atomic_write."""
from __future__ import annotations

import os
import tempfile


def atomic_write(path: str, write) -> None:
    """Call write(fileobj) on a temporary file beside path, then rename it over path: a crash
    leaves the old file (or none), never half of a new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                     # mkstemp makes 0600; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
