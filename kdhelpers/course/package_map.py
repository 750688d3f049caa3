"""The package map in CONTRIBUTING.md: each module with its line count and what it holds, what the
notebooks reach, and the longest function (`python -m kdhelpers.course map [--check]`)."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

from kdhelpers.course.readme import replace_section, write_or_check
from kdhelpers.course.runner import list_notebooks
from kdhelpers.paths import notebooks_dir, project_root

MAP_START = (
    "<!-- package map: written by `python -m kdhelpers.course map` from the code; edit there -->"
)
MAP_END = "<!-- /package map -->"
#: the aims for the code notebooks reach: lines in all, and lines per function
TARGET_LINES, TARGET_FUNCTION_LINES = 5000, 60


@dataclass(frozen=True)
class Module:
    """One module of kdhelpers: its dotted name, file, line count and the first line of its docstring."""

    name: str
    path: Path
    lines: int
    summary: str


def package_modules(package: Path | None = None) -> dict[str, Module]:
    """Every module of the kdhelpers package, by dotted name."""
    package = project_root() / "kdhelpers" if package is None else Path(package)
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        found[name] = Module(
            name, path, len(text.splitlines()), " ".join(doc.split("\n\n")[0].split())
        )
    return found


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that `name` (a module, or module.attribute) names."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(tree: ast.AST, known: set[str]) -> set[str]:
    """The kdhelpers modules that the code in `tree` imports (absolute imports)."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names]
        found |= {m for n in names if n.startswith("kdhelpers") and (m := _resolve(n, known))}
    return found


def notebook_code(path: Path) -> ast.Module:
    """A notebook's code cells as one Python module (shell `!` and magic `%` lines left out)."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    lines = [
        line
        for c in cells
        if c["cell_type"] == "code"
        for line in "".join(c["source"]).splitlines()
        if not line.lstrip().startswith(("!", "%"))
    ]
    return ast.parse("\n".join(lines))


def reached_by_notebooks(modules: dict[str, Module], folder: Path | None = None) -> set[str]:
    """The modules the notebooks import, with everything those import (and their packages)."""
    known = set(modules)
    folder = notebooks_dir() if folder is None else Path(folder)
    books = list_notebooks(folder)  # the chapters and, in solutions/, their solutions
    todo = set().union(*(imports_of(notebook_code(p), known) for p in books))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        todo |= (parents & known) | imports_of(ast.parse(modules[name].path.read_text()), known)
    return seen


def longest_functions(modules: dict[str, Module], names: set[str]) -> list[tuple[int, str]]:
    """(lines, 'module.function') of every function in `names`' modules, longest first."""
    found = []
    for name in names:
        for node in ast.walk(ast.parse(modules[name].path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    return sorted(found, reverse=True)


def package_map() -> str:
    """The Markdown section: totals, then a table of every module (reached by notebooks or not)."""
    modules = package_modules()
    reached = reached_by_notebooks(modules)
    total = sum(modules[m].lines for m in reached)
    functions = longest_functions(modules, reached)
    over = [f"`{n}` ({k})" for k, n in functions if k > TARGET_FUNCTION_LINES]
    rows = [
        f"| `{m.name}` | {m.lines:,} | {'yes' if m.name in reached else 'no'} | "
        + m.summary.replace("|", "\\|")
        + " |"
        for m in modules.values()
    ]
    return "\n".join(
        [
            MAP_START,
            f"The notebooks reach {len(reached)} of the {len(modules)} modules: {total:,} lines "
            f"(the aim is at most about {TARGET_LINES:,}). The longest function they reach is "
            f"`{functions[0][1]}`, {functions[0][0]} lines; {len(over)} are over "
            f"{TARGET_FUNCTION_LINES} lines" + (f": {', '.join(over)}." if over else "."),
            "",
            "| module | lines | notebooks reach it | what it holds |",
            "|---|---:|---|---|",
            *rows,
            MAP_END,
        ]
    )


def map_command(check: bool = False, path: Path | None = None) -> int:
    """Write (or with check, verify) CONTRIBUTING.md's package map; 1 when a check fails."""
    path = project_root() / "CONTRIBUTING.md" if path is None else Path(path)
    new = replace_section(path.read_text(encoding="utf-8"), MAP_START, MAP_END, package_map())
    return write_or_check(path, new, check, "python -m kdhelpers.course map")
