"""Provenance: every record carries its run id and the run ids of the records it read; a test fails
when a committed record rests on a record since re-run, or a notebook shows another run than its
record."""

import json

from kdhelpers.course import runner as course
from kdhelpers.course.provenance import (
    notebook_run_id,
    provenance_problems,
    reads_from_log,
    records_without_run_id,
)
from kdhelpers.paths import committed_results_dir
from kdhelpers.results import READS_LOG_ENV, load_results, save_results

#: Records committed before run ids existed: each leaves this list when its chapter is re-run
#: (the test below fails until it does, so the list only shrinks).
BEFORE_PROVENANCE = {
    "01_concepts",
    "01_concepts_solutions",
    "02_the-loss",
    "03_teacher",
    "05_distillation",
    "06_compression",
    "07_cross-domain",
    "08_beyond-logits",
    "09_scaling-out",
    "09_scaling-out_solutions",
    "10_outlook-and-faq",
}


def test_the_committed_run_is_fresh_and_every_new_record_has_a_run_id():
    notebooks = course.list_notebooks()
    assert provenance_problems(committed_results_dir(), notebooks) == []
    unstamped = set(records_without_run_id(committed_results_dir()))
    assert unstamped <= BEFORE_PROVENANCE, (
        f"records without a run id: {unstamped - BEFORE_PROVENANCE}"
    )
    assert BEFORE_PROVENANCE <= unstamped, (
        f"re-run with a run id, drop from BEFORE_PROVENANCE: {BEFORE_PROVENANCE - unstamped}"
    )


def test_records_carry_a_run_id_and_load_results_notes_what_it_hands_out(tmp_path, monkeypatch):
    save_results("01_a", {"x": 1}, "standard", folder=tmp_path)
    first = load_results("01_a", folder=tmp_path)
    assert first["run_id"].endswith("Z") and first["date"] == first["run_id"][:10]
    log = tmp_path / "reads.jsonl"
    monkeypatch.setenv(READS_LOG_ENV, str(log))
    load_results("01_a", folder=tmp_path)
    load_results("02_missing", folder=tmp_path)  # nothing handed out, nothing noted
    assert reads_from_log(log, own="02_b") == {"01_a": first["run_id"]}
    assert reads_from_log(log, own="01_a") == {}


def test_a_re_run_leaves_its_readers_stale_and_the_check_says_which(
    tiny_notebook, tmp_path, monkeypatch
):
    books = tmp_path / "notebooks"
    books.mkdir()
    save = "from kdhelpers.results import load_results, save_results\n"
    tiny_notebook(books / "01_a.ipynb", save + "save_results('01_a', {'x': 1}, PROFILE)")
    tiny_notebook(
        books / "02_b.ipynb",
        save
        + "a = load_results('01_a', PROFILE)\nsave_results('02_b', {'y': a['metrics']['x']}, PROFILE)",
    )
    monkeypatch.setattr(course, "notebooks_dir", lambda: books)
    monkeypatch.delenv("KD_RESULTS_DIR", raising=False)
    out = tmp_path / "run"
    assert course.run("quick", out=out) == 0
    results = out / "results"
    a, b = (json.loads((results / f"{n}.json").read_text()) for n in ("01_a", "02_b"))
    assert b["reads"] == {"01_a": a["run_id"]} and a["reads"] == {}
    executed = [out / "01_a.ipynb", out / "02_b.ipynb"]
    assert [notebook_run_id(p) for p in executed] == [a["run_id"], b["run_id"]]
    assert provenance_problems(results, executed) == []
    # chapter 01 is re-run alone: 02's record now rests on a run that is gone
    assert course.run("quick", only=["01"], out=out) == 0
    problems = provenance_problems(results, executed)
    assert len(problems) == 1 and "02_b read 01_a of run" in problems[0]
    assert "re-run 02_b" in problems[0]
    # a notebook committed from another run than its record
    stale_copy = tmp_path / "01_a.ipynb"
    stale_copy.write_text((books / "01_a.ipynb").read_text())
    nb = json.loads(stale_copy.read_text())
    nb["metadata"]["kd_course"] = {"profile": "quick", "run_id": a["run_id"]}
    stale_copy.write_text(json.dumps(nb))
    assert any("01_a.ipynb shows run" in p for p in provenance_problems(results, [stale_copy]))


def test_a_record_with_a_run_id_but_no_reads_was_written_outside_the_runner(tmp_path):
    save_results("01_a", {"x": 1}, "standard", folder=tmp_path)  # a run id, no reads
    problems = provenance_problems(tmp_path, [])
    assert len(problems) == 1 and "01_a has a run id but no reads" in problems[0]


def test_a_re_run_repairs_a_damaged_record(tiny_notebook, tmp_path, monkeypatch):
    books = tmp_path / "notebooks"
    books.mkdir()
    save = "from kdhelpers.results import save_results\n"
    tiny_notebook(books / "01_a.ipynb", save + "save_results('01_a', {'x': 1}, PROFILE)")
    monkeypatch.setattr(course, "notebooks_dir", lambda: books)
    results = tmp_path / "results"
    results.mkdir()
    (results / "01_a.json").write_text('{"metrics": {"x": ')  # cut short, e.g. by a killed run
    monkeypatch.setenv("KD_RESULTS_DIR", str(results))
    assert course.run("quick", out=tmp_path / "run") == 0
    record = json.loads((results / "01_a.json").read_text())
    assert record["metrics"] == {"x": 1} and record["reads"] == {} and record["run_id"]
