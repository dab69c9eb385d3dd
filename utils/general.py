"""Small CLI helpers: logging setup and input-file checks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["setup_logging", "check_file"]


class _PlainFormatter(logging.Formatter):
    """The message alone for INFO and below; ``WARNING: message`` above. No colours (logs end up in files)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname}: {text}" if record.levelno >= logging.WARNING else text


def setup_logging(verbose: bool = False, rank: int = 0) -> None:
    """Configure the root logger for a command-line program (call once from ``main``, never from libraries).

    Rank 0 logs INFO (DEBUG with ``verbose``) to stderr; other DDP ranks log warnings and errors only, with
    a ``[rank N]`` prefix, so a multi-GPU run prints each message once. Calling again replaces the handler
    installed by an earlier call and leaves other handlers (e.g. pytest's) alone.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_yolov3_cli", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._yolov3_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_PlainFormatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    root.addHandler(handler)
    if rank == 0:
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
    else:
        root.setLevel(logging.WARNING)


def check_file(path: str | Path, kind: str, search_dirs: Sequence[str | Path] = ()) -> Path:
    """The existing file ``path`` (as given, else under each of ``search_dirs`` in order).

    Args:
        path: the file the user named.
        kind: what it is, for the message ('cfg', 'data', 'weights', 'hyp', ...).
        search_dirs: folders also tried for a relative ``path`` (e.g. ``cfg/`` for a bare cfg name).

    Raises:
        FileNotFoundError: naming every place that was looked at.
    """
    if str(path) == "":
        raise FileNotFoundError(f"no {kind} file given")
    path = Path(path)
    candidates = [path]
    if not path.is_absolute():
        candidates += [Path(d) / path for d in search_dirs]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c.resolve()) + (" (a folder)" if c.is_dir() else "") for c in candidates)
    raise FileNotFoundError(f"{kind} file '{path}' not found; looked in: {looked}")
