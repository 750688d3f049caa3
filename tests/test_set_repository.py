"""scripts/set_repository.py: one command points pyproject, README and notebooks at a fork."""

import importlib.util
import shutil
import subprocess
import sys

import pytest

from kdhelpers.paths import project_root

ROOT = project_root()
SCRIPT = ROOT / "scripts" / "set_repository.py"
_spec = importlib.util.spec_from_file_location("set_repository", SCRIPT)
set_repository = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(set_repository)

OLD_PATH = set_repository.parse_repository(set_repository.current_repository(ROOT))


def run_script(*args):
    """Run the script as a learner would; its completed process."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def checkout(tmp_path):
    """A copy of the files the script edits."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copy(ROOT / "README.md", tmp_path)
    shutil.copytree(
        ROOT / "notebooks",
        tmp_path / "notebooks",
        ignore=shutil.ignore_patterns(".ipynb_checkpoints"),
    )
    return tmp_path


def texts(root):
    """Every file the script may edit, by relative path."""
    files = [
        root / "pyproject.toml",
        root / "README.md",
        *sorted((root / "notebooks").glob("*.ipynb")),
        *sorted((root / "notebooks" / "solutions").glob("*.ipynb")),
    ]
    assert len(files) == 2 + len(set_repository.notebooks(root)), "every notebook, once"
    return {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in files}


def test_the_checkout_agrees_with_pyproject():
    done = run_script("--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert set_repository.problems(ROOT) == []


def test_rewrite_changes_only_the_repository_and_goes_back(checkout):
    before = texts(checkout)
    done = run_script("--root", str(checkout), "https://github.com/me/kd-fork.git")
    assert done.returncode == 0, done.stderr
    after = texts(checkout)
    for name, text in before.items():
        assert after[name] == text.replace(OLD_PATH, "me/kd-fork"), (
            f"{name}: more than the URL changed"
        )
        assert OLD_PATH not in after[name]
    assert 'Repository = "https://github.com/me/kd-fork"' in after["pyproject.toml"]
    assert 'REPOSITORY = \\"https://github.com/me/kd-fork\\"' in after["notebooks/00_setup.ipynb"]
    assert "colab.research.google.com/github/me/kd-fork/blob/main/notebooks/" in after["README.md"]
    assert set_repository.problems(checkout) == []
    assert run_script("--root", str(checkout), "--check").returncode == 0

    back = run_script("--root", str(checkout), f"https://github.com/{OLD_PATH}")
    assert back.returncode == 0, back.stderr
    assert texts(checkout) == before, "rewriting back must restore every byte"


def test_check_reports_a_notebook_that_disagrees(checkout):
    nb = checkout / "notebooks" / "00_setup.ipynb"
    nb.write_text(
        nb.read_text(encoding="utf-8").replace(
            f'REPOSITORY = \\"https://github.com/{OLD_PATH}\\"',
            'REPOSITORY = \\"https://github.com/x/y\\"',
        ),
        encoding="utf-8",
    )
    done = run_script("--root", str(checkout), "--check")
    assert done.returncode == 1
    assert "00_setup.ipynb: Colab cell sets REPOSITORY" in done.stdout
    assert "00_setup.ipynb: Colab cell differs" not in done.stdout  # compared with itself first
    assert "solutions/00_setup_solutions.ipynb: Colab cell differs" in done.stdout
    refused = run_script("--root", str(checkout), "https://github.com/me/kd-fork")
    assert refused.returncode == 2 and "fix these first" in refused.stderr
    assert "me/kd-fork" not in (checkout / "pyproject.toml").read_text()


def test_check_reports_a_readme_link_to_another_repository(checkout):
    readme = checkout / "README.md"
    readme.write_text(readme.read_text() + "\n[elsewhere](https://github.com/other/repo)\n")
    done = run_script("--root", str(checkout), "--check")
    assert done.returncode == 1 and "README.md: link to github.com/other/repo" in done.stdout


def test_short_and_long_forms_name_the_same_repository():
    for url in [
        "me/kd-fork",
        "https://github.com/me/kd-fork",
        "https://github.com/me/kd-fork.git/",
    ]:
        assert set_repository.parse_repository(url) == "me/kd-fork"


@pytest.mark.parametrize(
    "url",
    [
        "https://gitlab.com/me/fork",
        "github.com/me/fork",
        "https://github.com/me",
        "https://github.com/me/fork/tree/main",
    ],
)
def test_bad_urls_are_refused_by_name(url, checkout):
    with pytest.raises(ValueError, match="url must look like https://github.com/OWNER/NAME"):
        set_repository.parse_repository(url)
    done = run_script("--root", str(checkout), url)
    assert done.returncode == 2 and "url must look like" in done.stderr


def test_notebook_in_another_layout_is_refused(checkout):
    nb = checkout / "notebooks" / "01_concepts.ipynb"
    nb.write_text(nb.read_text(encoding="utf-8").rstrip("\n"), encoding="utf-8")
    done = run_script("--root", str(checkout), "https://github.com/me/kd-fork")
    assert (
        done.returncode == 2
        and "01_concepts.ipynb is not laid out as nbformat writes it" in done.stderr
    )
    assert "me/kd-fork" not in (checkout / "pyproject.toml").read_text()
