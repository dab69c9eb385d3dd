"""Dataset problems: what is wrong with a set (``Problem``), the error that stops training, and their report text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_LISTED = 10  # problems named in the error that stops training (python -m utils.datasets check lists all kinds)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: ``kind`` groups it in reports, ``where`` is ``file:line`` or ``file``, and
    ``message`` is the full sentence (location, value, rule and fix)."""

    kind: str
    where: str
    message: str


class DatasetError(ValueError):
    """A dataset that cannot be trained on; ``problems`` holds every problem found, the message lists some."""

    def __init__(self, message: str, problems: Sequence[Problem]) -> None:
        super().__init__(message)
        self.problems = list(problems)


def group_problems(problems: Sequence[Problem]) -> dict[str, list[Problem]]:
    """Problems by kind, kinds in order of first appearance."""
    groups: dict[str, list[Problem]] = {}
    for p in problems:
        groups.setdefault(p.kind, []).append(p)
    return groups


def format_problems(problems: Sequence[Problem], per_kind: int = 5, limit: int | None = None) -> str:
    """Multi-line text of ``problems`` grouped by kind: ``kind: count`` then the first ``per_kind`` messages of
    the kind (and ``limit`` messages at most in all), then ``... and N more`` where some were left out."""
    lines, shown = [], 0
    for kind, group in group_problems(problems).items():
        lines.append(f"  {kind}: {len(group)}")
        room = len(group) if limit is None else max(limit - shown, 0)
        listed = group[: min(per_kind, room)]
        lines += [f"    {p.message}" for p in listed]
        shown += len(listed)
        if len(group) > len(listed):
            lines.append(f"    ... and {len(group) - len(listed)} more")
    return "\n".join(lines)


def problems_message(source: object, problems: Sequence[Problem], limit: int = MAX_LISTED) -> str:
    """The error that stops training: how many problems of which kinds in ``source``, up to ``limit`` of them
    named, and the command that lists them all."""
    kinds = group_problems(problems)
    head = (f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the dataset "
            f"({', '.join(f'{k}: {len(v)}' for k, v in kinds.items())}); it cannot be used until they are fixed:")
    return (f"{head}\n{format_problems(problems, per_kind=limit, limit=limit)}\n"
            "(python -m utils.datasets check DATA.data lists the problems of the train and valid sets, all kinds)")


def first_few(items: Sequence[str], n: int = 5) -> str:
    """``a, b, c`` or ``a, b, c and 7 more``."""
    text = ", ".join(str(x) for x in items[:n])
    return text + (f" and {len(items) - n} more" if len(items) > n else "")

