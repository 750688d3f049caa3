"""The notebooks' Colab cell, run as Colab runs it: clone, install, run again, and a bad address.

The cell's own code (read from the committed notebooks) runs in a fresh Python with a fake
`google.colab` already imported (as in a Colab kernel), a fake `pip` that records what it was
asked to install, a local git repository instead of GitHub and a temporary folder instead of
/content/kd-course.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import version

import pytest

from kdhelpers.course.runner import list_notebooks

NOTEBOOKS = list_notebooks()
REPOSITORY_LINE = re.compile(r'^REPOSITORY = "[^"]*"$', re.M)
FOLDER_LINE = re.compile(r'^FOLDER = "[^"]*"$', re.M)
FORM_TITLE = "# @title Colab set-up: run this first on Colab (does nothing elsewhere)"


def colab_cell(nb_path):
    """The notebook's one code cell that mentions google.colab."""
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    found = [
        c for c in cells if c["cell_type"] == "code" and "google.colab" in "".join(c["source"])
    ]
    assert len(found) == 1, f"{nb_path.name}: expected one Colab cell, found {len(found)}"
    return found[0]


def colab_cell_source(nb_path):
    """The source of the notebook's Colab cell."""
    return "".join(colab_cell(nb_path)["source"])


CELL = colab_cell_source(NOTEBOOKS[0])


def test_every_notebook_has_the_same_colab_cell():
    for nb in NOTEBOOKS:
        assert colab_cell_source(nb) == CELL, (
            f"{nb.name}: Colab cell differs from {NOTEBOOKS[0].name}"
        )
    first, second = CELL.splitlines()[:2]
    assert first == FORM_TITLE, "the cell opens on its Colab form title"
    assert second.startswith("# Colab only:"), "then says it only acts on Colab"
    assert "!" not in CELL.replace("!=", ""), "plain Python, no shell magics"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_colab_cell_opens_collapsed(nb):
    """Colab shows the form title only (cellView), JupyterLab hides the source (source_hidden)."""
    cell = colab_cell(nb)
    assert "".join(cell["source"]).splitlines()[0] == FORM_TITLE, "first line: the form title"
    meta = cell.get("metadata", {})
    assert meta.get("cellView") == "form", f"{nb.name}: Colab cell needs cellView 'form'"
    assert meta.get("jupyter", {}).get("source_hidden") is True, (
        f"{nb.name}: Colab cell needs jupyter.source_hidden true"
    )


def cell_with(repository, folder):
    """The cell's code with its two constants replaced by a test repository and folder."""
    code, n_repo = REPOSITORY_LINE.subn(f"REPOSITORY = {str(repository)!r}", CELL)
    code, n_folder = FOLDER_LINE.subn(f"FOLDER = {str(folder)!r}", code)
    assert (n_repo, n_folder) == (1, 1), "the cell must set REPOSITORY and FOLDER on one line each"
    return code


def git(*args, cwd):
    """Run git quietly in `cwd`."""
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def colab(tmp_path):
    """A fake Colab: origin repository, fake google.colab and pip, and a runner for the cell."""
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "pyproject.toml").write_text('[project]\nname = "kd-probe"\nversion = "0"\n')
    (origin / "kd_probe.py").write_text("VALUE = 42\n")
    git("init", "-q", cwd=origin)
    git("add", ".", cwd=origin)
    git("commit", "-q", "-m", "first", cwd=origin)

    fakes = tmp_path / "fakes"  # on PYTHONPATH: `python -m pip` finds this pip first
    (fakes / "pip").mkdir(parents=True)
    (fakes / "pip" / "__init__.py").write_text("")
    (fakes / "pip" / "__main__.py").write_text(
        textwrap.dedent("""\
        import json, os, sys
        with open(os.environ["FAKE_PIP_LOG"], "a") as log:
            log.write(json.dumps(sys.argv[1:]) + "\\n")
        if os.environ.get("FAKE_PIP_FAIL"):
            sys.exit("ERROR: fake pip was told to fail")
    """)
    )
    on_colab = tmp_path / "on_colab"  # google.colab imported at start-up, as in a Colab kernel
    (on_colab / "google" / "colab").mkdir(parents=True)
    (on_colab / "google" / "__init__.py").write_text("")
    (on_colab / "google" / "colab" / "__init__.py").write_text("")
    (on_colab / "sitecustomize.py").write_text("import google.colab  # noqa: F401\n")

    class Colab:
        folder = tmp_path / "content" / "kd-course"
        pip_log = tmp_path / "pip.log"
        url = origin.as_uri()

        def run(self, code, *, url=None, colab=True, pip_fails=False):
            """Run `code` after the cell (or the cell twice, as `code` may say) in a new Python."""
            paths = [str(on_colab), str(fakes)] if colab else [str(fakes)]
            env = dict(
                os.environ,
                PYTHONPATH=os.pathsep.join(paths),
                FAKE_PIP_LOG=str(self.pip_log),
                GIT_TERMINAL_PROMPT="0",
            )
            env.pop("FAKE_PIP_FAIL", None)
            if pip_fails:
                env["FAKE_PIP_FAIL"] = "1"
            script = tmp_path / "kernel.py"
            script.write_text(f"CELL = {cell_with(url or self.url, self.folder)!r}\n{code}")
            return subprocess.run(
                [sys.executable, str(script)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

        def pip_calls(self):
            """What the fake pip was asked, one list of arguments per call."""
            if not self.pip_log.exists():
                return []
            return [json.loads(line) for line in self.pip_log.read_text().splitlines()]

    return Colab(), origin


SHOW = """
exec(CELL)
import json, kd_probe
print(json.dumps({"value": kd_probe.VALUE, "on_path": sys.path.count(FOLDER)}))
"""


def test_cell_clones_installs_and_imports(colab):
    colab, _ = colab
    done = colab.run("exec(CELL)\n" + SHOW)  # the cell run twice in one kernel
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"value": 42, "on_path": 1}
    assert (colab.folder / ".git").is_dir() and (colab.folder / "kd_probe.py").is_file()
    wanted = ["install", "-q", "-e", str(colab.folder), f"torch=={version('torch')}"]
    assert colab.pip_calls() == [wanted, wanted], "pip: the clone, editable, torch kept as it is"


def test_cell_run_again_in_a_new_kernel_keeps_the_clone(colab):
    colab, origin = colab
    assert colab.run("exec(CELL)").returncode == 0
    first = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=colab.folder, capture_output=True, text=True, check=True
    ).stdout
    (origin / "later.py").write_text("")
    git("add", ".", cwd=origin)
    git("commit", "-q", "-m", "later", cwd=origin)
    done = colab.run(SHOW)
    assert done.returncode == 0, done.stderr
    assert "already exists" not in done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"value": 42, "on_path": 1}
    again = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=colab.folder, capture_output=True, text=True, check=True
    ).stdout
    assert again == first, "a second run must not clone again"
    assert len(colab.pip_calls()) == 2


def test_cell_stops_with_a_clear_message_when_the_clone_fails(colab, tmp_path):
    colab, _ = colab
    missing = (tmp_path / "no-such-repository").as_uri()
    done = colab.run(SHOW, url=missing)
    assert done.returncode != 0
    assert f"RuntimeError: Could not clone {missing} into {colab.folder}" in done.stderr
    assert "check the address and the network" in done.stderr
    assert "fatal:" in done.stderr, "git's own reason is shown too"
    assert colab.pip_calls() == [], "pip must not run after a failed clone"
    assert not colab.folder.exists()


def test_cell_stops_with_a_clear_message_when_pip_fails(colab):
    colab, _ = colab
    done = colab.run(SHOW, pip_fails=True)
    assert done.returncode != 0
    assert (
        f"RuntimeError: pip could not install the course helpers from {colab.folder}" in done.stderr
    )
    assert "fake pip was told to fail" in done.stderr
    assert "kd_probe" not in done.stdout


def test_cell_does_nothing_outside_colab(colab):
    colab, _ = colab
    done = colab.run("exec(CELL)\nprint(FOLDER in sys.path)", colab=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert not colab.folder.exists() and colab.pip_calls() == []
