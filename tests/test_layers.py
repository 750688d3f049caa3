"""Package structure in three layers: core (kdhelpers/*.py), chapters (kdhelpers/chapters/) and the
course machinery (kdhelpers/course/: runner, README writer, CLI). Core never imports chapters; nothing
but the machinery imports the machinery, and no notebook does; no import cycles; one name per meaning."""

import ast
import json
from collections import defaultdict
from pathlib import Path

import kdhelpers
from kdhelpers.course.package_map import imports_of as imports_of_code
from kdhelpers.course.package_map import notebook_code
from kdhelpers.course.runner import list_notebooks

PACKAGE = Path(kdhelpers.__file__).parent
#: Public names that several modules may define on purpose (command-line entry points).
SHARED_ON_PURPOSE = {"main"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, tree: ast.Module, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported kdhelpers module, line, at module level?) for every import in `tree`."""
    found = []
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for target in targets:
            if target.startswith("kdhelpers") and target in known and target != name:
                found.append((target, node.lineno, id(node) in top))
    return found


def graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees)
    return {name: {t for t, _, _ in imports_of(name, tree, known)} for name, tree in trees.items()}


def is_chapter(name: str) -> bool:
    return name.startswith("kdhelpers.chapters")


def test_core_modules_never_import_chapter_modules():
    bad = [
        (m, dep)
        for m, deps in graph().items()
        if not is_chapter(m)
        for dep in deps
        if is_chapter(dep)
    ]
    assert not bad, f"core modules importing chapter modules: {bad}"


def is_machinery(name: str) -> bool:
    return name == "kdhelpers.course" or name.startswith("kdhelpers.course.")


def test_only_the_course_machinery_imports_the_course_machinery():
    bad = [
        (m, dep)
        for m, deps in graph().items()
        if not is_machinery(m)
        for dep in deps
        if is_machinery(dep)
    ]
    assert not bad, f"library modules importing the course machinery (kdhelpers.course): {bad}"


def notebook_imports(path: Path) -> set[str]:
    """The kdhelpers modules a notebook's code cells import."""
    return imports_of_code(notebook_code(path), set(modules()))


def test_notebooks_never_import_the_course_machinery():
    bad = {
        p.name: sorted(m for m in notebook_imports(p) if is_machinery(m))
        for p in list_notebooks()  # chapters and solutions
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"notebooks importing kdhelpers.course (course machinery): {bad}"


def test_the_machinery_check_sees_a_notebook_import(tmp_path):
    cell = {
        "cell_type": "code",
        "source": ["!pip -q install x\n", "from kdhelpers.course import cli\n"],
    }
    (tmp_path / "x.ipynb").write_text(json.dumps({"cells": [cell]}))
    found = notebook_imports(tmp_path / "x.ipynb")
    assert any(is_machinery(m) for m in found)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for start in sorted(g):
        if start not in state:
            visit(start, [start])
    assert not cycles, f"import cycles: {cycles}"


def test_kdhelpers_imports_are_at_module_level():
    """Function-level imports of our own modules only hide cycles; keep them at the top."""
    trees = modules()
    known = set(trees)
    nested = [
        (name, target, line)
        for name, tree in trees.items()
        for target, line, top in imports_of(name, tree, known)
        if not top
    ]
    assert not nested, f"function-level imports of kdhelpers modules: {nested}"


def test_no_two_public_names_mean_different_things():
    where = defaultdict(list)
    for name, tree in modules().items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            else:
                continue
            for n in names:
                if not n.startswith("_") and n not in SHARED_ON_PURPOSE:
                    where[n].append(name)
    clashes = {n: ms for n, ms in where.items() if len(ms) > 1}
    assert not clashes, f"public names defined in several modules: {clashes}"


def test_the_checks_fail_on_a_planted_violation(tmp_path):
    """The graph helpers see a core-to-chapter import and a cycle when there is one."""
    known = {"kdhelpers.a", "kdhelpers.chapters.b"}
    tree = ast.parse(
        "from kdhelpers.chapters.b import x\n\ndef f():\n    from kdhelpers import a\n"
    )
    found = imports_of("kdhelpers.a", tree, known | {"kdhelpers"})
    assert ("kdhelpers.chapters.b", 1, True) in found
    tree2 = ast.parse("def f():\n    from kdhelpers.a import y\n")
    assert imports_of("kdhelpers.chapters.b", tree2, known) == [("kdhelpers.a", 2, False)]


def test_every_name_a_notebook_imports_from_kdhelpers_exists():
    """A renamed module or helper breaks a notebook's import cell: caught here in seconds."""
    import importlib

    missing = []
    for path in list_notebooks():  # chapters and solutions
        for node in ast.walk(notebook_code(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdhelpers"):
                try:
                    module = importlib.import_module(node.module)
                except ImportError:
                    missing.append(f"{path.name}: {node.module}")
                    continue
                for a in node.names:
                    try:  # a name in the module, or a submodule of a package
                        getattr(module, a.name, None) or importlib.import_module(
                            f"{node.module}.{a.name}"
                        )
                    except ImportError:
                        missing.append(f"{path.name}: {node.module}.{a.name}")
    assert not missing, f"notebooks import names that do not exist: {missing}"
