"""How a training run ends: stop requests from Ctrl-C (SIGINT) and SIGTERM, and the process exit code.

Exit codes, so that ``train.py && next-step``, Slurm requeue scripts and CI can tell the endings apart:

==== ===================================================================================================
code ending
==== ===================================================================================================
0    the run finished its epochs (also when a signal arrived during the last epoch's test: it finished)
1    an error (bad input, unreadable weights, full disk, non-finite loss, run folder in use)
130  stopped by SIGINT (Ctrl-C) after saving a checkpoint: 128 + 2, the shell convention
143  stopped by SIGTERM (kill, Slurm, Kubernetes) after saving a checkpoint: 128 + 15
==== ===================================================================================================

A second Ctrl-C stops at once without saving (a KeyboardInterrupt; Python then exits as killed by SIGINT).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["EXIT_ERROR", "EXIT_FINISHED", "StopRequest", "exit_code"]

EXIT_FINISHED = 0
EXIT_ERROR = 1


def exit_code(finished: bool, signum: int | None) -> int:
    """0 for a run that finished its epochs, ``128 + signum`` for one that a signal stopped first (130 for
    SIGINT, 143 for SIGTERM), ``EXIT_ERROR`` for one that ended early without a signal."""
    if finished:
        return EXIT_FINISHED
    return 128 + int(signum) if signum is not None else EXIT_ERROR


class StopRequest:
    """Signal handler that records a stop request; the training loop checks ``requested`` after each batch
    and after the end-of-epoch test, saves a checkpoint and returns.

    It says at once that the signal arrived and what the run finishes first (``stage``: "this batch" while
    training, whatever ``during`` names meanwhile, e.g. "the test of epoch 3"), on file descriptor
    ``announce_fd`` with a plain ``os.write``: a ``print`` from a signal handler can hit the stream while the
    interrupted code is writing to it (tqdm) and raise "reentrant call". ``announce_fd=None`` stays silent
    (torchrun ranks other than 0: every rank gets the signal).

    Args:
        after_batches: testing hook: behave exactly as if SIGTERM arrived after this many batches (counted by
            ``count_batch`` from this object's creation); the exit code is then 143.
        announce_fd: where the notice goes (2, stderr, by default).

    Attributes:
        requested: a stop was requested.
        signum: the first signal received (``signal.SIGTERM`` for the testing hook), None before.
    """

    def __init__(self, after_batches: int | None = None, announce_fd: int | None = 2) -> None:
        self.requested = False
        self.signum: int | None = None
        self.after_batches = after_batches
        self.batches = 0
        self.stage = "this batch"
        self.announce_fd = announce_fd
        self._previous: dict[int, Any] = {}

    def notice(self, signum: int) -> str:
        """The line printed when ``signum`` arrives (the current ``stage`` filled in)."""
        name = signal.Signals(signum).name
        return (
            f"{name} received: the run will stop after {self.stage} and save a checkpoint "
            f"(press Ctrl-C again to stop at once without saving)"
        )

    def __call__(self, signum: int, frame: Any) -> None:
        first = not self.requested
        self.requested = True
        if self.signum is None:
            self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once
        if first and self.announce_fd is not None:
            with contextlib.suppress(OSError):  # a closed stderr must not turn a stop request into a crash
                os.write(self.announce_fd, f"\n{self.notice(signum)}\n".encode())

    def count_batch(self) -> None:
        """Count a batch (for the ``after_batches`` testing hook)."""
        self.batches += 1
        if self.after_batches is not None and self.batches >= self.after_batches and not self.requested:
            self.requested = True
            self.signum = signal.SIGTERM

    @contextlib.contextmanager
    def during(self, stage: str) -> Iterator[None]:
        """Name what the run finishes before it stops while this block runs: ``with stop.during("the test of
        epoch 3"): results = test(...)``. A signal in the block is announced with that name."""
        previous, self.stage = self.stage, stage
        try:
            yield
        finally:
            self.stage = previous

    def exit_code(self, finished: bool) -> int:
        """The process exit code of a run that ``finished`` its epochs or not (see the module doc)."""
        return exit_code(finished, self.signum if self.requested else None)

    def install(self) -> None:
        """Handle SIGINT and SIGTERM with this object (main thread only: elsewhere signals cannot be handled)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self)

    def uninstall(self) -> None:
        """Put back the handlers that ``install`` replaced."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
