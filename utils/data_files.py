"""Where a dataset's files are: image lists and folders, each image's label file, and ``.data`` file resolution.

Labels are found as ultralytics users expect: the last ``images`` folder of an image's path becomes ``labels``
and the extension ``.txt`` (``data/x/images/train/a.jpg`` -> ``data/x/labels/train/a.txt``); an image with no
``images`` folder in its path has its label file beside it.

Image lists (``.txt``, one image per line): an absolute entry is used as is; a relative entry resolves against the
working directory first, then against the list's folder (the reference trainer read entries relative to the
working directory); an entry starting with ``./`` tries the list's folder first (YOLOv5's convention, and what
``utils.convert`` writes). An entry found in neither place is an error naming the list, the line and both places.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from utils.parse_config import parse_data_cfg
from utils.problems import MAX_LISTED, Problem, format_problems

IMG_FORMATS = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".dng", ".webp")


def _resolve_list_entry(entry: str, list_file: Path, cwd: Path) -> tuple[str | None, list[Path]]:
    """``(path, places tried)`` of one relative or absolute image-list entry; path None when found nowhere.

    Absolute: as is. Relative: the working directory first, then the list's folder (the reference read entries
    relative to the working directory; lists written beside their images need the second). ``./``-prefixed
    entries try the list's folder first (YOLOv5's convention, and what ``utils.convert`` writes)."""
    p = Path(entry)
    if p.is_absolute():
        places = [p]
    elif entry.startswith(("./", ".\\")):
        places = [list_file.parent / p, cwd / p]
    else:
        places = [cwd / p, list_file.parent / p]
    places = list(dict.fromkeys(Path(os.path.abspath(c)) for c in places))  # one place when cwd is the list's folder
    found = next((c for c in places if c.is_file()), None)
    return (None if found is None else str(found)), places


def collect_image_files(
    path: str | Path | Sequence[str | Path], cwd: str | Path | None = None
) -> tuple[list[str], list[Problem]]:
    """Image paths of a dataset source, sorted and de-duplicated, and the list entries that were not found.

    ``path`` is a folder (its images, not recursive), a ``.txt`` file listing image paths one per line (see
    ``_resolve_list_entry`` for relative entries; ``cwd`` is the working directory, default the process's), a
    single image, a glob pattern, or a list of these. Image extensions are ``IMG_FORMATS`` (any case); list
    entries with other extensions are skipped.

    Returns:
        ``(files, problems)``: problems of kind ``image not found`` name the list, the line and every place looked
        at. A source that does not exist at all, an unreadable list, or no images at all are errors instead.

    Raises:
        FileNotFoundError: a source that does not exist (naming it).
        ValueError: an unreadable list, or no images found (naming the source).
    """
    sources = list(path) if isinstance(path, (list, tuple)) else [path]
    cwd = Path.cwd() if cwd is None else Path(cwd)
    files: list[str] = []
    problems: list[Problem] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files += [str(q) for q in p.iterdir() if q.suffix.lower() in IMG_FORMATS]
        elif p.is_file() and p.suffix.lower() == ".txt":
            try:
                text = p.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"{p}: cannot read image list ({e}); fix: make it a readable UTF-8 text file") from e
            for line_no, line in enumerate(text.splitlines(), 1):
                entry = line.strip()
                if not entry or Path(entry).suffix.lower() not in IMG_FORMATS:
                    continue
                found, places = _resolve_list_entry(entry, p, cwd)
                if found is not None:
                    files.append(found)
                    continue
                tried = " and ".join(str(c) for c in places)
                problems.append(Problem("image not found", f"{p}:{line_no}", (
                    f"{p}:{line_no}: image {entry} not found (looked at {tried}); fix: correct the entry (relative "
                    "entries resolve against the working directory, then the list's folder) or remove the line")))
        elif p.is_file():
            files.append(str(p))
        elif any(c in str(src) for c in "*?["):  # a glob pattern
            files += [f for f in glob.glob(str(src), recursive=True) if os.path.isfile(f)]
        else:
            raise FileNotFoundError(f"{src}: not an image folder, a .txt list of images, an image or a glob pattern")
    files = sorted({os.path.normpath(f) for f in files if Path(f).suffix.lower() in IMG_FORMATS})
    if not files and not problems:
        raise ValueError(f"{path}: no images found (extensions {', '.join(IMG_FORMATS)})")
    return files, problems


def list_image_files(path: str | Path | Sequence[str | Path], cwd: str | Path | None = None) -> list[str]:
    """``collect_image_files``'s paths; list entries found nowhere are an error.

    Raises:
        FileNotFoundError: a missing source, or list entries that were not found (the first few named with
            ``list:line`` and the places looked at, then a count).
        ValueError: as ``collect_image_files``.
    """
    files, problems = collect_image_files(path, cwd)
    if problems:
        raise FileNotFoundError(f"{len(problems)} image list entr{'y' if len(problems) == 1 else 'ies'} not found:\n"
                                + format_problems(problems, per_kind=MAX_LISTED))
    return files


def img2label_paths(img_files: Sequence[str]) -> list[str]:
    """Label file of each image: the last ``images`` folder of the path replaced by ``labels``, suffix ``.txt``."""
    out = []
    for f in img_files:
        parts = list(Path(f).parts)
        for k in range(len(parts) - 2, -1, -1):
            if parts[k] == "images":
                parts[k] = "labels"
                break
        out.append(str(Path(*parts).with_suffix(".txt")))
    return out


def _resolve(value: str, data_file: Path, key: str) -> str:
    """An existing path for ``value``: absolute as is; relative against the .data file's folder, then the CWD."""
    p = Path(value).expanduser()
    candidates = [p] if p.is_absolute() else [data_file.parent / p, Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return os.path.abspath(c)
    tried = " and ".join(os.path.abspath(c) for c in candidates)
    raise FileNotFoundError(f"{data_file}: {key}={value} not found (looked at {tried})")


def read_names(path: str | Path) -> list[str]:
    """Class names of a ``.names`` file: one per line, stripped, blank lines skipped."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def resolve_data_cfg(path: str | Path) -> dict:
    """Read a ``.data`` file and resolve its paths.

    ``train`` and ``valid`` are a folder, a ``.txt`` list or an image, or several separated by commas; relative
    paths resolve against the ``.data`` file's folder first, then the working directory. ``names`` is a file with
    one class name per line (line i = class i).

    Returns:
        The raw keys plus ``classes`` (int), ``names`` (list of str), ``train``/``valid`` (str, or list of str
        when several), ``path`` (the .data file).

    Raises:
        FileNotFoundError: the .data file or a path it names (the message names every place tried).
        ValueError: a required key is missing, or the names file does not have ``classes`` names.
    """
    data_file = Path(path)
    cfg = parse_data_cfg(data_file)
    missing = [k for k in ("classes", "train", "valid", "names") if k not in cfg]
    if missing:
        raise ValueError(f"{data_file}: missing {', '.join(k + '=' for k in missing)} (fix: add the line(s))")
    out = dict(cfg)
    out["path"] = str(data_file)
    for key in ("train", "valid"):
        paths = [_resolve(v.strip(), data_file, key) for v in str(cfg[key]).split(",") if v.strip()]
        out[key] = paths[0] if len(paths) == 1 else paths
    names_file = _resolve(str(cfg["names"]), data_file, "names")
    names = read_names(names_file)
    if len(names) != cfg["classes"]:
        raise ValueError(
            f"{names_file}: {len(names)} names but {data_file} says classes={cfg['classes']} (fix: one name per "
            "line, line i = class i, or correct classes=)"
        )
    out["names"] = names
    return out

