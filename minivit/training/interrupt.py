"""Ctrl-C during training: the first one stops after the current step and saves a checkpoint,
a second one stops at once."""
from __future__ import annotations

import os
import signal
import sys
import threading


class GracefulInterrupt:
    """The first Ctrl-C asks the loop to stop after the current step (and save); a second one
    raises KeyboardInterrupt at once. Only installed in the main thread."""

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce                          # print (one process of a job does)
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print("\nCtrl-C: saving a checkpoint after this step (press again to quit at once)",
                  file=sys.stderr)

    def save_and_exit(self, save, out_dir: str, where: str) -> None:
        """save('last.npz'), say where the run stopped (`where`: as the progress bar counts) and
        how to continue, and exit with status 130."""
        save("last.npz")
        last = os.path.join(out_dir, "last.npz")
        if self.announce:
            print(f"\ninterrupted {where}: saved {last}; continue with the same command "
                  f"plus --resume {last}", file=sys.stderr)
        raise SystemExit(130)

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
