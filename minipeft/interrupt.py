"""Ctrl-C at a step boundary: the first SIGINT asks the loop to stop, the second aborts.

:func:`stop_on_sigint` installs the handler for the length of a training loop; the loop checks
the flag after each optimizer step, saves a checkpoint and raises :class:`TrainingInterrupted`,
which the command line turns into one line and exit status 130.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["TrainingInterrupted", "stop_on_sigint"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training at a step boundary; ``checkpoint`` is where it was saved (None
    without ``output_dir``). A ``KeyboardInterrupt``, so code that does not know it still stops.
    """

    def __init__(self, step: int, max_steps: int, checkpoint: str | None) -> None:
        where = f"; checkpoint saved to {checkpoint}" if checkpoint else "; nothing was saved"
        super().__init__(f"training interrupted after step {step}/{max_steps}{where}")
        self.step, self.max_steps, self.checkpoint = step, max_steps, checkpoint


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[list[bool]]:
    """While active, the first SIGINT sets ``flag[0]`` (stop after this step) instead of raising;
    the second raises KeyboardInterrupt. Outside the main thread signals cannot be caught: the
    flag then never sets and Ctrl-C behaves as usual."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True
        print("\nCtrl-C: stopping after this step (press again to abort at once)",
              file=sys.stderr, flush=True)  # fmt: skip

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
