"""The course runner: usage errors, failing notebooks, and where results go."""

import json
import os
import subprocess
import sys

import nbformat
import pytest

from kdhelpers.course import runner as course
from kdhelpers.course.cli import main
from kdhelpers.course.runner import clean_notebook, run
from kdhelpers.paths import committed_results_dir, project_root, results_dir
from kdhelpers.results import load_results, save_results


def test_bad_only_is_a_usage_error_naming_the_chapters(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--profile", "quick", "--only", "99"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--only 99" in err and "available chapters" in err and "05" in err


def _books(tmp_path, *names):
    """A notebooks folder with empty chapters and, in solutions/, empty solutions notebooks."""
    books = tmp_path / "notebooks"
    (books / "solutions").mkdir(parents=True)
    for name in names:
        place = books / "solutions" if name.endswith("_solutions") else books
        (place / f"{name}.ipynb").write_text("{}")
    return books


def test_only_takes_chapters_solutions_on_request_and_exact_file_names(tmp_path):
    books = _books(tmp_path, "03_teacher", "03_teacher_solutions", "04_pseudo-labels")

    def names(only, with_solutions=False):
        return [p.name for p in course.list_notebooks(books, only, with_solutions)]

    assert names(["03"]) == ["03_teacher.ipynb"]
    assert names(["03_teacher"]) == ["03_teacher.ipynb"]
    assert names(["03"], True) == ["03_teacher.ipynb", "03_teacher_solutions.ipynb"]
    assert names(["03_teacher_solutions"]) == ["03_teacher_solutions.ipynb"]
    assert names(["03_teacher.ipynb"]) == ["03_teacher.ipynb"]
    assert names(["03_teacher.ipynb", "04"]) == ["03_teacher.ipynb", "04_pseudo-labels.ipynb"]
    assert names(["03_teacher_solutions.ipynb"]) == ["03_teacher_solutions.ipynb"]
    assert names(None) == [
        "03_teacher.ipynb",
        "03_teacher_solutions.ipynb",  # from solutions/, right after its chapter
        "04_pseudo-labels.ipynb",
    ]
    assert course.list_notebooks(books, ["03"], True)[1] == (
        books / "solutions" / "03_teacher_solutions.ipynb"
    )
    with pytest.raises(ValueError, match="no notebook"):
        names(["03_teacher_x.ipynb"])


@pytest.mark.parametrize("only", ["05", b"05", [5], ("05", None)])
def test_only_that_is_not_a_list_of_names_is_refused(only):
    """A string would select notebooks by its characters; the error names `only` and shows a list."""
    with pytest.raises(TypeError, match=r"only must be a list of chapter names, e.g. \['05'\]"):
        course.list_notebooks(only=only)


def test_empty_only_is_refused():
    with pytest.raises(ValueError, match="only is empty"):
        course.list_notebooks(only=[])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--only"], "expected at least one argument"),
        (["run", "--profile", "quick", "--only"], "expected at least one argument"),
        (["run", "--with-solutions"], "--with-solutions goes with --only"),
    ],
)
def test_bare_only_and_lone_with_solutions_are_usage_errors(argv, message, capsys, monkeypatch):
    """A bare --only used to run the whole course in `standard`; now nothing runs."""
    monkeypatch.setattr(course, "execute_notebook", lambda *a, **k: pytest.fail("ran a notebook"))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_only_runs_the_chapter_and_with_solutions_adds_its_solutions(tmp_path, monkeypatch):
    books = _books(tmp_path, "05_distillation", "05_distillation_solutions", "06_compression")
    ran = []
    monkeypatch.setattr(course, "notebooks_dir", lambda: books)
    monkeypatch.setattr(course, "execute_notebook", lambda nb, *a, **k: ran.append(nb.name) or 0.0)
    monkeypatch.setenv("KD_RESULTS_DIR", str(tmp_path / "results"))
    assert main(["run", "--profile", "quick", "--only", "05", "--out", str(tmp_path / "a")]) == 0
    assert ran == ["05_distillation.ipynb"]
    ran.clear()
    argv = [
        "run",
        "--profile",
        "quick",
        "--only",
        "05",
        "--with-solutions",
        "--out",
        str(tmp_path / "b"),
    ]
    assert main(argv) == 0
    assert ran == ["05_distillation.ipynb", "05_distillation_solutions.ipynb"]


@pytest.mark.parametrize("content", ['{"metrics": {"a": 1', "", "[1, 2]", '{"metrics": 3}'])
def test_table_on_a_damaged_results_file_names_the_file_and_the_fix(tmp_path, capsys, content):
    (tmp_path / "05_distillation.json").write_text(content)
    assert main(["table", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "05_distillation.json" in err and "course run --only 05_distillation" in err
    assert "Traceback" not in err


def test_failing_notebook_is_reported_and_the_rest_still_run(
    tiny_notebook, tmp_path, monkeypatch, capsys
):
    books = tmp_path / "notebooks"
    books.mkdir()
    tiny_notebook(books / "01_fails.ipynb", "raise RuntimeError('boom in a cell')")
    tiny_notebook(
        books / "02_works.ipynb",
        "from kdhelpers.results import save_results\n"
        "save_results('02_works', {'answer': 42}, PROFILE)",
    )
    monkeypatch.setattr(course, "notebooks_dir", lambda: books)
    monkeypatch.delenv("KD_RESULTS_DIR", raising=False)
    status = run("quick", out=tmp_path / "run")
    out = capsys.readouterr().out
    assert status == 1
    assert "01_fails.ipynb: " in out and "boom in a cell" in out
    assert str(tmp_path / "run" / "01_fails.ipynb") in out  # the executed copy to look at
    assert "| 02_works | answer | 42 |" in out  # the table still prints
    assert (
        json.loads((tmp_path / "run" / "results" / "02_works.json").read_text())["profile"]
        == "quick"
    )


def test_in_place_run_keeps_a_failed_notebook_untouched(tiny_notebook, tmp_path, monkeypatch):
    books = tmp_path / "notebooks"
    books.mkdir()
    tiny_notebook(books / "01_fails.ipynb", "1 / 0")
    before = (books / "01_fails.ipynb").read_text()
    monkeypatch.setattr(course, "notebooks_dir", lambda: books)
    monkeypatch.setenv("KD_RESULTS_DIR", str(tmp_path / "res"))
    assert run("quick", out=tmp_path / "run", in_place=True) == 1
    assert (books / "01_fails.ipynb").read_text() == before


def test_in_place_run_strips_the_injected_cell_and_records_the_profile(
    tiny_notebook, tmp_path, monkeypatch
):
    books = tmp_path / "notebooks"
    books.mkdir()
    tiny_notebook(books / "01_ok.ipynb", "print(PROFILE)")
    monkeypatch.setattr(course, "notebooks_dir", lambda: books)
    monkeypatch.setenv("KD_RESULTS_DIR", str(tmp_path / "res"))
    assert run("quick", out=tmp_path / "run", in_place=True) == 0
    nb = nbformat.read(str(books / "01_ok.ipynb"), as_version=4)
    assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    run_meta = nb.metadata["kd_course"]
    assert run_meta["profile"] == "quick" and set(run_meta) == {"profile", "seconds"}
    assert 0 < run_meta["seconds"] < 600  # the run's wall time, kept for the README's table
    assert nb.cells[0].source.startswith('PROFILE = "auto"')  # the learner's cell decides again
    assert [c.execution_count for c in nb.cells] == [1, 2]
    assert nb.cells[1].outputs[0]["text"] == "quick\n"


def test_in_place_run_writes_a_solutions_notebook_back_to_solutions(
    tiny_notebook, tmp_path, monkeypatch
):
    books = tmp_path / "notebooks"
    (books / "solutions").mkdir(parents=True)
    tiny_notebook(books / "01_ok.ipynb", "print('chapter')")
    tiny_notebook(books / "solutions" / "01_ok_solutions.ipynb", "print('answers')")
    monkeypatch.setattr(course, "notebooks_dir", lambda: books)
    monkeypatch.setenv("KD_RESULTS_DIR", str(tmp_path / "res"))
    assert run("quick", only=["01"], out=tmp_path / "run", in_place=True, with_solutions=True) == 0
    assert sorted(p.relative_to(books).as_posix() for p in books.rglob("*.ipynb")) == [
        "01_ok.ipynb",
        "solutions/01_ok_solutions.ipynb",
    ], "each executed notebook goes back to its own place, and nowhere else"
    for path, text in [
        (books / "01_ok.ipynb", "chapter\n"),
        (books / "solutions" / "01_ok_solutions.ipynb", "answers\n"),
    ]:
        nb = nbformat.read(str(path), as_version=4)
        assert nb.metadata["kd_course"]["profile"] == "quick"
        assert nb.cells[1].outputs[0]["text"] == text


def test_clean_notebook_renumbers_after_dropping_the_injected_cell():
    cells = [
        nbformat.v4.new_code_cell("a", execution_count=1),
        nbformat.v4.new_code_cell("# Parameters", execution_count=2),
        nbformat.v4.new_code_cell(
            "b",
            execution_count=3,
            outputs=[
                nbformat.v4.new_output("execute_result", {"text/plain": "1"}, execution_count=3)
            ],
        ),
    ]
    cells[1].metadata["tags"] = ["injected-parameters"]
    kept = clean_notebook(nbformat.v4.new_notebook(cells=[c.copy() for c in cells]), "quick")
    assert [c.source for c in kept.cells] == [
        "a",
        "# Parameters",
        "b",
    ]  # executed copies repeat the run
    nb = clean_notebook(nbformat.v4.new_notebook(cells=cells), "standard", strip_injected=True)
    assert [c.source for c in nb.cells] == ["a", "b"]
    assert [c.execution_count for c in nb.cells] == [1, 2]
    assert nb.cells[1].outputs[0]["execution_count"] == 2


def test_ad_hoc_results_never_go_to_the_committed_folder(monkeypatch):
    monkeypatch.delenv("KD_RESULTS_DIR", raising=False)
    assert results_dir() != committed_results_dir()
    assert results_dir().relative_to(project_root()).parts[0] == "runs"  # git-ignored


def test_quick_numbers_are_refused_in_the_committed_folder():
    with pytest.raises(ValueError, match="quick-profile numbers"):
        save_results("99_test", {"x": 1}, "quick", folder=committed_results_dir())
    assert not (committed_results_dir() / "99_test.json").exists()


@pytest.mark.parametrize("bad", ["../escaped", "a/b", "", ".hidden", None])
def test_save_results_checks_the_notebook_name(tmp_path, bad):
    with pytest.raises(ValueError, match="plain name"):
        save_results(bad, {"x": 1}, "standard", folder=tmp_path)


def test_load_results_prefers_this_run_then_the_committed_run(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_RESULTS_DIR", str(tmp_path))
    committed = load_results("03_teacher")
    assert committed.get("profile") == "standard"  # nothing in this run's folder yet
    save_results("03_teacher", {"teacher_test_accuracy": 0.5}, "quick")
    assert load_results("03_teacher")["profile"] == "quick"
    assert load_results("03_teacher", "standard") == committed


def test_table_defaults_to_the_committed_results_and_says_so(capsys):
    assert main(["table"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Results in {committed_results_dir()}")
    assert "| 03_teacher | teacher_test_accuracy |" in out and "| quick |" not in out


@pytest.mark.notebook
def test_running_a_notebook_leaves_the_checkout_clean(tmp_path):
    """A learner's ad-hoc run (no KD_* variables) changes nothing that git tracks."""
    root = project_root()
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")

    def status() -> str:
        return subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
        ).stdout

    before = status()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KD_RESULTS_DIR", "KD_CHECKPOINT_DIR", "KD_CACHE_DIR")
    }
    code = (
        "import sys; from pathlib import Path; from kdhelpers.course.runner import execute_notebook; "
        "from kdhelpers.paths import notebooks_dir; "
        "execute_notebook(notebooks_dir() / '02_the-loss.ipynb', Path(sys.argv[1]), 'quick')"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "02.ipynb")], env=env, check=True, timeout=600
    )
    assert status() == before
    assert (root / "runs" / "results" / "02_the-loss.json").exists()


def test_settings_dataclasses_are_stored_as_plain_json(tmp_path):
    from kdhelpers.teacher import course_settings

    settings = course_settings("quick", 0)
    path = save_results("99_test", {"x": 1}, "standard", {"settings": settings}, folder=tmp_path)
    stored = json.loads(path.read_text())["details"]["settings"]
    assert stored["n_train"] == settings.n_train and stored["domain"] == "movies"
