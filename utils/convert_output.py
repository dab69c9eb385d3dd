"""A conversion's output folder: the planned files, the ``convert.json`` manifest of what was written, re-run rules.

A file the folder already holds is replaced only when the manifest shows an earlier conversion wrote it and it is
unchanged since; a file the user wrote or edited is refused (the error lists them) unless ``overwrite``. Outputs of
an earlier run that this run no longer writes are removed when unchanged, kept when edited. Every write goes
through a temporary sibling and a rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from utils.problems import first_few

LOGGER = logging.getLogger(__name__)

MANIFEST = "convert.json"
MANIFEST_VERSION = 1


@dataclass
class Output:
    """A file to write: ``text`` content, or a ``link`` to / ``copy`` of a source file."""

    kind: str
    text: str = ""
    src: Path | None = None

    def signature(self) -> str:
        if self.kind == "text":
            return "sha256:" + hashlib.sha256(self.text.encode()).hexdigest()
        if self.kind == "link":
            return f"link:{os.path.abspath(self.src)}"
        st = os.stat(self.src)
        return f"copy:{st.st_size}:{st.st_mtime_ns}"


def current_signature(path: Path, like: Iterable[str]) -> str | None:
    """The signature of what is at ``path`` now, in the form of the signatures in ``like``; None if nothing."""
    if path.is_symlink():
        return f"link:{os.readlink(path)}"
    if not path.is_file():
        return None
    like = list(like)
    if any(s.startswith("sha256:") for s in like) or not like:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    st = path.stat()
    return f"copy:{st.st_size}:{st.st_mtime_ns}"


def read_manifest(out_dir: Path) -> dict[str, list[str]]:
    """``relative path -> signatures`` of the files earlier conversions wrote into ``out_dir`` ({} when none)."""
    path = out_dir / MANIFEST
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_text())["files"]
        return {str(k): [str(s) for s in v] for k, v in files.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        LOGGER.warning("%s is unreadable (%s): every file already in %s counts as yours", path, e, out_dir)
        return {}


def _atomic(path: Path, make) -> None:
    """Create ``path`` through a temporary sibling and a rename (never writing through an existing link)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        make(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()


def write_output(path: Path, out: Output) -> None:
    """Write one planned file."""
    if out.kind == "text":
        _atomic(path, lambda t: t.write_text(out.text))
    elif out.kind == "link":
        _atomic(path, lambda t: os.symlink(os.path.abspath(out.src), t))
    else:
        _atomic(path, lambda t: shutil.copy2(out.src, t))


def write_tree(out_dir: Path, plan: dict[str, Output], meta: dict, overwrite: bool) -> None:
    """Write ``plan`` (relative path -> Output) into ``out_dir`` under the re-run rules of the module docstring.

    Raises:
        FileExistsError: files in the way that no earlier conversion wrote, or that were edited since (all of
            them named, the first few listed), unless ``overwrite``; or a folder where a file must go.
    """
    recorded = read_manifest(out_dir)
    planned = {rel: out.signature() for rel, out in plan.items()}
    refused, folders, todo = [], [], []
    for rel, sig in planned.items():
        path = out_dir / rel
        if path.is_dir() and not path.is_symlink():
            folders.append(str(path))
            continue
        now = current_signature(path, recorded.get(rel, [sig]))
        if now == sig:
            continue  # already what this run would write: left alone, so its modification time stays
        if now is not None and now not in recorded.get(rel, []) and not overwrite:
            refused.append(str(path))
        todo.append(rel)
    if folders:
        raise FileExistsError(f"{out_dir}: {len(folders)} folder(s) stand where files must go: "
                              f"{first_few(folders)} (fix: move them away or choose another output folder)")
    if refused:
        raise FileExistsError(
            f"{out_dir}: refusing to overwrite {len(refused)} file(s) that no earlier conversion wrote or that were "
            f"edited since: {first_few(refused)} (fix: move them away, choose another output folder, or pass "
            "--overwrite / overwrite=True to replace them; nothing was written)"
        )
    stale = {rel: sigs for rel, sigs in recorded.items() if rel not in planned and rel != MANIFEST}
    # record the new files before writing them, so an interrupted run leaves nothing that looks like the user's
    merged = {rel: sorted(set(recorded.get(rel, [])) | {sig}) for rel, sig in planned.items()}
    _write_manifest(out_dir, {**meta, "files": {**stale, **merged}})
    for rel in todo:
        write_output(out_dir / rel, plan[rel])
    kept = []
    for rel, sigs in stale.items():
        path = out_dir / rel
        now = current_signature(path, sigs)
        if now is None:
            continue
        if now in sigs:
            path.unlink()
            _remove_empty_parents(path.parent, out_dir)
        else:
            kept.append(str(path))
    if kept:
        LOGGER.warning("%d file(s) an earlier conversion wrote were edited since and are kept, though this run no "
                       "longer uses them: %s", len(kept), first_few(kept))
    if hasattr(os, "sync"):
        os.sync()  # the label files are on disk before the manifest says they are complete
    _write_manifest(out_dir, {**meta, "files": {rel: [sig] for rel, sig in sorted(planned.items())}})


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    path = out_dir / MANIFEST
    text = json.dumps({"version": MANIFEST_VERSION, **manifest}, indent=1) + "\n"

    def make(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic(path, make)


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent

