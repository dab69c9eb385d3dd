"""The repository's shape: no function over 80 lines, no file over 600, every module opens with a docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80  # def line to last line
MAX_FILE_LINES = 600
# Not the project's own code: training outputs, the generated shapes set, the staged copy of ../shared that
# bench/gpu_check.py --stage makes, and hidden folders (.git, virtual environments, caches).
SKIPPED = ("runs", "data/shapes", "shared")


def python_files(root: Path) -> list[Path]:
    """The .py files below `root`, outside the SKIPPED folders and hidden ones, sorted."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts[:-1]):
            continue
        if any(rel.parts[: len(Path(s).parts)] == Path(s).parts for s in SKIPPED):
            continue
        out.append(path)
    return out


def docstring_first_line(tree: ast.Module) -> str | None:
    """The module docstring's first line as written (not cleaned: a docstring opening with a blank line has an
    empty first line), or None without a docstring."""
    doc = ast.get_docstring(tree, clean=False)
    return None if doc is None else doc.split("\n", 1)[0].strip()


def structure_problems(root: Path) -> list[str]:
    """One line per rule broken in the tree below `root`: a function over MAX_FUNCTION_LINES lines, a file over
    MAX_FILE_LINES lines, a module without a docstring or whose docstring's first line is empty."""
    problems = []
    for path in python_files(root):
        rel = path.relative_to(root).as_posix()
        text = path.read_text()
        n_lines = len(text.splitlines())
        if n_lines > MAX_FILE_LINES:
            problems.append(f"{rel}: {n_lines} lines (at most {MAX_FILE_LINES})")
        tree = ast.parse(text, filename=rel)
        first = docstring_first_line(tree)
        if first is None:
            problems.append(f"{rel}: no module docstring (its first line should say the module's one job)")
        elif not first:
            problems.append(f"{rel}: the module docstring's first line is empty (it should say the module's one job)")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    limit = f"(at most {MAX_FUNCTION_LINES})"
                    problems.append(f"{rel}:{node.lineno}: {node.name} is {length} lines {limit}")
    return problems


def summary_problems(root: Path) -> list[str]:
    """Modules whose docstring's first line is not a whole summary: a second line follows it without a blank line
    (the statement of the module's job runs on over several lines)."""
    problems = []
    for path in python_files(root):
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
        lines = (doc or "").split("\n")
        if len(lines) > 1 and lines[0].strip() and lines[1].strip():
            problems.append(f"{path.relative_to(root).as_posix()}: docstring summary runs on: {lines[0].strip()!r}")
    return problems


def test_functions_files_and_module_docstrings() -> None:
    problems = structure_problems(REPO)
    assert not problems, "\n".join(problems)


def test_module_docstrings_open_with_a_one_line_summary() -> None:
    problems = summary_problems(REPO)
    assert not problems, "\n".join(problems)


def _function(name: str, body_lines: int) -> str:
    """A function whose def line and `body_lines` body lines make it body_lines + 1 lines long."""
    return f"def {name}():\n" + "".join(f"    x{i} = {i}\n" for i in range(body_lines))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_check_finds_each_kind_of_problem(tmp_path: Path) -> None:
    _write(tmp_path / "ok.py", '"""Holds an 80-line function."""\n\n' + _function("fits", 79))
    _write(tmp_path / "pkg" / "long.py", '"""Holds an 81-line method."""\n\n\nclass A:\n'
           + "".join("    " + line + "\n" for line in _function("too_long", 80).splitlines()))
    _write(tmp_path / "big.py", '"""Too many lines."""\n' + "x = 1\n" * 600)
    _write(tmp_path / "bare.py", "x = 1\n")
    _write(tmp_path / "blank.py", '"""\nThe job, on the second line."""\n')
    _write(tmp_path / "runon.py", '"""A summary that\nruns on."""\n')
    for skipped in ("runs/exp/x.py", "data/shapes/x.py", ".venv/lib/x.py", "shared/x.py"):
        _write(tmp_path / skipped, _function("skipped", 100))
    problems = structure_problems(tmp_path)
    assert problems == [
        "bare.py: no module docstring (its first line should say the module's one job)",
        "big.py: 601 lines (at most 600)",
        "blank.py: the module docstring's first line is empty (it should say the module's one job)",
        "pkg/long.py:5: too_long is 81 lines (at most 80)",
    ]
    assert summary_problems(tmp_path) == ["runon.py: docstring summary runs on: 'A summary that'"]


@pytest.mark.parametrize("body_lines, found", [(79, False), (80, True)])
def test_function_length_counts_def_line_to_last_line(tmp_path: Path, body_lines: int, found: bool) -> None:
    _write(tmp_path / "m.py", '"""One function."""\n\n\n@staticmethod\n' + _function("f", body_lines) + "\n\n# end\n")
    assert bool(structure_problems(tmp_path)) is found


def contents_table_mismatch(root: Path) -> tuple[list[str], list[str]]:
    """(modules missing from the README's Contents table, table rows naming no file): top-level programs and
    ``utils/`` modules each need a row of their own."""
    text = (root / "README.md").read_text()
    table = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    modules = {p.name for p in root.glob("*.py")} | {f"utils/{p.name}" for p in (root / "utils").glob("*.py")}
    modules -= {"utils/__init__.py"}
    named_files = {x for x in listed if x.endswith(".py")}
    return sorted(modules - listed), sorted(x for x in named_files if not (root / x).is_file())


def test_readme_contents_table_matches_the_tree() -> None:
    missing, stale = contents_table_mismatch(REPO)
    assert not missing and not stale, f"README Contents: add rows for {missing}; remove rows for {stale}"


def test_contents_check_finds_a_missing_and_a_stale_row(tmp_path: Path) -> None:
    (tmp_path / "utils").mkdir()
    for f in ("train.py", "utils/a.py", "utils/__init__.py"):
        _write(tmp_path / f, '"""x."""\n')
    rows = "| file | job |\n|---|---|\n| `train.py` | t |\n| `utils/gone.py` | g |\n"
    _write(tmp_path / "README.md", f"# T\n\n## Contents\n\n{rows}\n## Next\n\n| `utils/a.py` | not in the table |\n")
    assert contents_table_mismatch(tmp_path) == (["utils/a.py"], ["utils/gone.py"])
