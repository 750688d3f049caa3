"""Point the course at a GitHub repository (a fork): pyproject.toml, README and every notebook.

The one place that names the repository is `pyproject.toml` `[project.urls] Repository`; the
README's links and Colab badges, each notebook's badge (first cell) and the `REPOSITORY = "..."`
line of each notebook's Colab cell follow it. This script rewrites them all together:

    python scripts/set_repository.py me/my-fork     # or https://github.com/me/my-fork
    python scripts/set_repository.py --check     # lists what disagrees; exit status 1 if anything

Notebooks are rewritten exactly as nbformat writes them (JSON, indent 1, a trailing newline), so
the diff holds only the changed lines.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GITHUB = re.compile(r"https://github\.com/(?P<path>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)")
COLAB = "https://colab.research.google.com/github/"
CELL_LINE = re.compile(r'^REPOSITORY = "(?P<url>[^"]*)"$', re.M)
_PYPROJECT_LINE = re.compile(r'^(Repository = ")([^"]*)(")$', re.M)


def parse_repository(url: str) -> str:
    """The `owner/name` of a GitHub repository given as its https://github.com URL or owner/name."""
    cleaned = url.strip().removesuffix("/").removesuffix(".git")
    match = GITHUB.fullmatch(cleaned) or GITHUB.fullmatch(f"https://github.com/{cleaned}")
    if not match:
        raise ValueError(
            f"url must look like https://github.com/OWNER/NAME or OWNER/NAME, got {url!r}"
        )
    return match["path"]


def current_repository(root: Path = ROOT) -> str:
    """The repository URL that `pyproject.toml` `[project.urls] Repository` names under `root`."""
    pyproject = Path(root) / "pyproject.toml"
    try:
        return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["urls"]["Repository"]
    except KeyError as missing:
        raise ValueError(f"{pyproject} has no [project.urls] Repository") from missing


def notebooks(root: Path = ROOT) -> list[Path]:
    """Every notebook of the course under `root`: the chapters, then their solutions."""
    books = Path(root) / "notebooks"
    return [
        *sorted(books.glob("[0-9][0-9]_*.ipynb")),
        *sorted((books / "solutions").glob("[0-9][0-9]_*.ipynb")),
    ]


def _load_notebook(path: Path) -> dict:
    """A notebook's JSON; refuses a file that nbformat's layout would not reproduce exactly."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    if _dump_notebook(nb) != text:
        raise ValueError(
            f"{path} is not laid out as nbformat writes it (indent 1, trailing newline)"
        )
    return nb


def _dump_notebook(nb: dict) -> str:
    """A notebook's JSON as nbformat writes it."""
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _source(cell: dict) -> str:
    """A cell's source as one string."""
    return "".join(cell["source"])


def colab_cell(nb: dict, name: str = "notebook") -> dict:
    """The Colab cell of notebook `nb` (`name` in errors): its one code cell naming google.colab."""
    found = [c for c in nb["cells"] if c["cell_type"] == "code" and "google.colab" in _source(c)]
    if len(found) != 1:
        raise ValueError(f"nb {name} must have exactly one Colab cell, found {len(found)}")
    return found[0]


def problems(root: Path = ROOT) -> list[str]:
    """Every place under `root` that does not name the repository of `pyproject.toml`."""
    url = current_repository(root)
    path = parse_repository(url)
    found = []
    cells = {}
    for nb_path in notebooks(root):
        nb = _load_notebook(nb_path)
        name = nb_path.relative_to(Path(root) / "notebooks").as_posix()  # solutions/... too
        badge = f"{COLAB}{path}/blob/main/notebooks/{name}"
        if badge not in _source(nb["cells"][0]):
            found.append(f"{name}: first cell lacks the Colab badge {badge}")
        cells[name] = _source(colab_cell(nb, name))
        lines = CELL_LINE.findall(cells[name])
        if lines != [url]:
            found.append(f"{name}: Colab cell sets REPOSITORY to {lines}, not [{url!r}]")
    if not cells:
        found.append("no notebooks found")
    first = next(iter(cells), None)
    for name, cell in cells.items():
        if cell != cells[first]:
            found.append(f"{name}: Colab cell differs from the one in {first}")
    readme = (Path(root) / "README.md").read_text(encoding="utf-8")
    for link in GITHUB.finditer(readme):
        if link["path"] != path:
            found.append(f"README.md: link to github.com/{link['path']}, not {path}")
    for link in re.finditer(re.escape(COLAB) + r"([^/\s]+/[^/\s]+)/", readme):
        if link[1] != path:
            found.append(f"README.md: Colab link to {link[1]}, not {path}")
    return found


def _replace_in_text(text: str, old: str, new: str) -> str:
    """`text` with the GitHub and Colab links of repository `old` pointing at `new`."""
    text = re.sub(
        re.escape(f"https://github.com/{old}") + r"(?![\w.-])", f"https://github.com/{new}", text
    )
    return text.replace(f"{COLAB}{old}/", f"{COLAB}{new}/")


def set_repository(url: str, root: Path = ROOT) -> list[Path]:
    """Make pyproject.toml, README.md and the notebooks under `root` name `url`; files changed."""
    new = parse_repository(url)
    url = f"https://github.com/{new}"
    root = Path(root).resolve()
    before = problems(root)
    if before:
        raise ValueError(
            "the repository is named inconsistently; fix these first:\n" + "\n".join(before)
        )
    old_url = current_repository(root)
    old = parse_repository(old_url)
    planned: dict[Path, str] = {}

    pyproject = root / "pyproject.toml"
    text, count = _PYPROJECT_LINE.subn(lambda m: m[1] + url + m[3], pyproject.read_text("utf-8"))
    if count != 1:
        raise ValueError(f'{pyproject} must have one line `Repository = "..."`, found {count}')
    planned[pyproject] = text

    readme = root / "README.md"
    planned[readme] = _replace_in_text(readme.read_text(encoding="utf-8"), old, new)

    for nb_path in notebooks(root):
        nb = _load_notebook(nb_path)
        first = nb["cells"][0]
        first["source"] = [_replace_in_text(line, old, new) for line in first["source"]]
        cell = colab_cell(nb, nb_path.name)
        cell["source"] = [CELL_LINE.sub(f'REPOSITORY = "{url}"', line) for line in cell["source"]]
        planned[nb_path] = _dump_notebook(nb)

    changed = []
    for path, text in planned.items():
        if path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command line: rewrite the repository URL everywhere, or `--check` that all places agree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "url", nargs="?", help="the repository: https://github.com/OWNER/NAME or OWNER/NAME"
    )
    parser.add_argument("--check", action="store_true", help="only list what disagrees")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the course checkout (default: this one)"
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.check == (args.url is not None):
        parser.error("give either a repository url or --check")
    try:
        if args.check:
            found = problems(root)
            for line in found:
                print(line)
            print(f"{len(found)} disagreement(s) with {current_repository(root)}")
            return 1 if found else 0
        changed = set_repository(args.url, root)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    for path in changed:
        print(f"updated {path.relative_to(root)}")
    print(f"repository: {current_repository(root)} ({len(changed)} file(s) changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
