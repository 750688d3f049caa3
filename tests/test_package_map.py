"""CONTRIBUTING.md's package map is generated from the code, and its check fails when the code moves."""

import json
import textwrap

from kdhelpers.course import package_map as pm


def test_contributing_holds_the_current_package_map():
    assert pm.map_command(check=True) == 0, "run python -m kdhelpers.course map and commit"


def _tiny_tree(tmp_path):
    pkg = tmp_path / "kdhelpers"
    (pkg / "chapters").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""The package."""\n')
    (pkg / "chapters" / "__init__.py").write_text('"""Chapters."""\n')
    (pkg / "a.py").write_text('"""Module a.\n\nMore text."""\nfrom kdhelpers.b import f\n')
    (pkg / "b.py").write_text(
        '"""Module b."""\n\n\ndef f():\n' + "    x = 1\n" * 70 + "    return x\n"
    )
    (pkg / "c.py").write_text('"""Module c, which no notebook reaches."""\n')
    (pkg / "chapters" / "d.py").write_text('"""Chapter d."""\nimport kdhelpers.c\n')
    books = tmp_path / "notebooks"
    books.mkdir()
    cells = [
        {"cell_type": "code", "source": ["!pip install x\n", "from kdhelpers.a import f\n"]},
        {"cell_type": "code", "source": ["from kdhelpers.chapters import d\n"]},
    ]
    (books / "01_x.ipynb").write_text(json.dumps({"cells": cells}))
    return pkg, books


def test_reach_follows_imports_and_packages(tmp_path):
    pkg, books = _tiny_tree(tmp_path)
    modules = pm.package_modules(pkg)
    assert modules["kdhelpers.a"].summary == "Module a."
    assert modules["kdhelpers.b"].lines == 75
    reached = pm.reached_by_notebooks(modules, books)
    assert reached == {
        "kdhelpers",
        "kdhelpers.a",
        "kdhelpers.b",
        "kdhelpers.chapters",
        "kdhelpers.chapters.d",
        "kdhelpers.c",
    }
    (books / "01_x.ipynb").write_text(
        json.dumps({"cells": [{"cell_type": "code", "source": ["from kdhelpers.a import f"]}]})
    )
    assert "kdhelpers.c" not in pm.reached_by_notebooks(modules, books)
    (books / "solutions").mkdir()
    (books / "solutions" / "01_x_solutions.ipynb").write_text(
        json.dumps({"cells": [{"cell_type": "code", "source": ["import kdhelpers.c"]}]})
    )
    assert "kdhelpers.c" in pm.reached_by_notebooks(modules, books), "solutions count too"
    assert pm.longest_functions(modules, {"kdhelpers.b"}) == [(72, "kdhelpers.b.f")]


def test_the_check_fails_on_a_stale_map(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "CONTRIBUTING.md"
    doc.write_text(f"# x\n\n{pm.package_map()}\n\nafter\n")
    assert pm.map_command(check=True, path=doc) == 0
    stale = doc.read_text().replace("| `kdhelpers.targets` |", "| `kdhelpers.target` |")
    doc.write_text(stale)
    assert pm.map_command(check=True, path=doc) == 1
    assert "python -m kdhelpers.course map" in capsys.readouterr().err
    assert pm.map_command(path=doc) == 0 and doc.read_text().endswith("after\n")
    doc.write_text(textwrap.dedent("no markers here\n"))
    try:
        pm.map_command(path=doc)
    except ValueError as exc:
        assert "markers once each" in str(exc)
    else:
        raise AssertionError("a file without markers must be refused")
