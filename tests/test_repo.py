"""Repository conventions: notebook skeleton and hygiene, README and badges against one URL."""

import json
import re
import sys
import tomllib

import pytest

from kdhelpers.course.runner import list_notebooks
from kdhelpers.paths import notebooks_dir, project_root, solutions_dir

ROOT = project_root()
NOTEBOOKS = list_notebooks()
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
REPO_PATH = REPO_URL.removeprefix("https://github.com/")
FROZEN_BAR = re.compile(r"\b(?!100%)\d{1,3}%\|[^|\n]*\|\s*\d+/\d+")  # tqdm text below 100%
MACHINE_PATHS = re.compile(r"/work/|/root/|/home/\w+/|/tmp/|ipykernel_\d+|C:\\\\Users")
CHECK_TAG = "nbval-check-output"  # nbval --nbval-lax compares the outputs of cells with this tag
NBVAL_COMMENT = re.compile(r"^\s*#\s*(NBVAL_|PYTEST_VALIDATE_)", re.M)
UNCHECKED = {"08_beyond-logits_solutions"}  # no cell of it prints a result that repeats exactly


def cells(nb_path):
    return json.loads(nb_path.read_text())["cells"]


def source(cell):
    return "".join(cell["source"])


def repo_path(nb_path):
    """The notebook's path in the repository, e.g. notebooks/solutions/05_distillation_solutions.ipynb."""
    return nb_path.relative_to(ROOT).as_posix()


def test_notebooks_exist_in_pairs():
    stems = {p.stem for p in NOTEBOOKS}
    assert any(not s.endswith("_solutions") for s in stems), "no course notebooks found"
    for stem in stems:
        pair = (
            stem.removesuffix("_solutions") if stem.endswith("_solutions") else stem + "_solutions"
        )
        assert pair in stems, f"{stem} has no paired notebook {pair}.ipynb"


def test_chapters_and_solutions_live_apart():
    """notebooks/ lists the chapters alone; their solutions are in notebooks/solutions/."""
    for nb in NOTEBOOKS:
        home = solutions_dir() if nb.stem.endswith("_solutions") else notebooks_dir()
        assert nb.parent == home, f"{repo_path(nb)} belongs in {home.relative_to(ROOT)}/"
    stray = sorted(p.name for p in notebooks_dir().glob("*.ipynb") if p not in NOTEBOOKS)
    stray += sorted(p.name for p in solutions_dir().glob("*.ipynb") if p not in NOTEBOOKS)
    assert not stray, f"notebooks the course does not list (not NN_name.ipynb): {stray}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_relative_links_in_notebooks_lead_to_files(nb):
    """A chapter's link to its solutions (and back) follows the files where they are."""
    for c in cells(nb):
        if c["cell_type"] != "markdown":
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", source(c)):
            if re.match(r"[a-z]+:|#", target):
                continue  # a web address or an anchor in the notebook
            path = target.split("#")[0]
            assert (nb.parent / path).exists(), f"{repo_path(nb)}: link to missing {target}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_skeleton(nb):
    cs = cells(nb)
    text = "\n".join(source(c) for c in cs)
    assert source(cs[0]).startswith("# "), "first cell must be the title"
    badge = f"https://colab.research.google.com/github/{REPO_PATH}/blob/main/{repo_path(nb)}"
    assert badge in source(cs[0]), f"first cell needs the Colab badge {badge}"
    install = [c for c in cs if c["cell_type"] == "code" and "google.colab" in source(c)]
    assert len(install) == 1 and install[0] is cs[1], "second cell: the Colab cell"
    assert re.findall(r'^REPOSITORY = "(.*)"$', source(install[0]), re.M) == [REPO_URL]
    params = [c for c in cs if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert re.search(r'^PROFILE = "auto"', source(params[0]), re.M)
    assert re.search(r"^SEED = \d+", source(params[0]), re.M)
    assert re.search(r"^## 1\. ", text, re.M), "numbered sections start with '## 1. '"
    if not nb.stem.endswith("_solutions"):
        assert re.search(r"^## Summary", text, re.M) and re.search(r"^## Exercises", text, re.M)
        assert "Learning goals" in source(cs[0])


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_was_executed_cleanly(nb):
    code = [c for c in cells(nb) if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), f"not executed top to bottom: {counts}"
    for c in code:
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", f"error output: {out.get('ename')}"
    injected = [c for c in cells(nb) if "injected-parameters" in c["metadata"].get("tags", [])]
    assert not injected, (
        "papermill's injected-parameters cell overrides the learner's PROFILE: strip it"
    )
    run = json.loads(nb.read_text())["metadata"].get("kd_course", {})
    assert run.get("profile") == "standard", (
        f"outputs must come from a standard run (metadata: {run})"
    )
    assert not MACHINE_PATHS.search(nb.read_text()), "notebook contains a path of this machine"
    for c in code:
        for out in c.get("outputs", []):
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            assert not FROZEN_BAR.search(text), f"frozen progress bar in an output: {text[:120]!r}"
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), (
                "widget output"
            )


def test_nbval_tag_is_the_one_nbval_honours():
    from nbval.plugin import find_metadata_tags

    assert dict(find_metadata_tags({"tags": [CHECK_TAG]})) == {"check": True}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_nbval_markers_are_cell_tags_not_comments(nb):
    """A learner reads no `# NBVAL_...` lines; nbval still checks each notebook's results."""
    cs = cells(nb)
    commented = [i for i, c in enumerate(cs) if NBVAL_COMMENT.search(source(c))]
    assert not commented, (
        f"cells {commented} hold an nbval comment marker: remove the line and tag the cell "
        f"{CHECK_TAG!r} instead"
    )
    tagged = [i for i, c in enumerate(cs) if CHECK_TAG in c.get("metadata", {}).get("tags", [])]
    assert all(cs[i]["cell_type"] == "code" for i in tagged), "only code cells have outputs"
    if nb.stem not in UNCHECKED:
        assert tagged, f"no cell tagged {CHECK_TAG!r}: nbval would compare none of its results"


def test_readme_lists_every_notebook_with_badge():
    readme = (ROOT / "README.md").read_text()
    for nb in NOTEBOOKS:
        if nb.stem.endswith("_solutions"):
            continue
        badge = f"https://colab.research.google.com/github/{REPO_PATH}/blob/main/{repo_path(nb)}"
        assert badge in readme, f"README lacks a Colab badge for {nb.name}"
    for url in re.findall(
        r"https://(?:colab\.research\.google\.com/github|github\.com)/[^\s)\"']+", readme
    ):
        assert REPO_PATH in url, (
            f"README link {url} does not use the repository set in pyproject.toml"
        )


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cpu_torch = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert re.search(rf"^{re.escape(cpu_torch)}$", readme, re.M), "README needs the CPU torch line"
    first_install = re.search(r"^pip install ", readme, re.M)
    assert first_install and readme.startswith(cpu_torch, first_install.start()), (
        "the first install command of the README must be the CPU torch line"
    )
    assert "pip install -r requirements.txt" in readme and "jupyter lab notebooks/" in readme
    assert "pip install -c .ci/constraints.txt" not in readme, (
        "the CI pin is no CPU path for learners: from PyPI alone it is the CUDA build"
    )
    assert re.search(r"^pytest$", readme, re.M), "README must show the test command `pytest`"
    assert re.search(r"^pytest$", ci, re.M), ".ci/run must call the README's test command"
    assert "-c .ci/constraints.txt -r requirements.txt" in ci
    for check in ("ruff check .", "ruff format --check ."):  # linters and formatter, notebooks too
        assert re.search(rf"^{re.escape(check)}$", ci, re.M), f".ci/run must run `{check}`"
    assert "torch==2.13.0" in (ROOT / ".ci" / "constraints.txt").read_text()


def test_python_version_claims_agree():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    claim = pyproject["project"]["requires-python"]
    match = re.fullmatch(r">=3\.(\d+)", claim)
    assert match, f"requires-python should be a lower bound, got {claim!r}"
    minor = int(match[1])
    readme = (ROOT / "README.md").read_text()
    assert f"Python 3.{minor}+" in readme, f"README must say Python 3.{minor}+ like pyproject.toml"
    assert not re.search(r"Python 3\.\d+\+", readme.replace(f"Python 3.{minor}+", "")), (
        "README names another minimum Python version"
    )
    conda = re.search(r"^\s*- python=3\.(\d+)$", (ROOT / "environment.yml").read_text(), re.M)
    assert conda and int(conda[1]) >= minor, "environment.yml must pick a supported Python"
    running = sys.version.split()[0]
    assert sys.version_info >= (3, minor), f"these tests run on Python {running}, below {claim}"
