"""Environment checks report problems with a fix instead of raising."""

import time

from kdhelpers.hub import hub_offline_reason
from kdhelpers.setup_checks import Check, checks_table, run_checks


def test_offline_flag_is_reported_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    reason = hub_offline_reason()
    assert reason == "HF_HUB_OFFLINE is set"
    assert time.perf_counter() - start < 1.0


def test_unreachable_hub_times_out_quickly(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # discard port
    start = time.perf_counter()
    reason = hub_offline_reason(timeout_s=1.0)
    assert reason is not None and "127.0.0.1" in reason
    assert time.perf_counter() - start < 5.0


def test_run_checks_lists_every_area(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checks = run_checks("cpu")
    names = [c.name for c in checks]
    for expected in (
        "torch",
        "device",
        "mixed precision",
        "packaged teacher",
        "course data",
        "Hugging Face hub",
    ):
        assert expected in names
    hub = checks[names.index("Hugging Face hub")]
    assert not hub.ok and "offline" in hub.detail and hub.fix
    assert hub.status == "note", "an unreachable hub needs no action: it must not be labelled FIX"
    assert checks[names.index("packaged teacher")].ok


def test_table_shows_fix_only_for_failures():
    table = checks_table(
        [
            Check("a", True, "fine", "do x"),
            Check("b", False, "broken", "do y"),
            Check("c", False, "absent", "nothing", required=False),
        ]
    )
    assert "do y" in table and "do x" not in table and "| b | FIX |" in table
    assert "| c | note |" in table and "| c | FIX |" not in table


def test_committed_setup_notebook_has_no_fix_rows_for_things_that_are_fine():
    """The committed 00_setup run shows the checks of a working machine: no FIX row at all."""
    import json

    from kdhelpers.paths import notebooks_dir

    nb = json.loads((notebooks_dir() / "00_setup.ipynb").read_text())
    text = "".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/markdown", ""))
        for c in nb["cells"]
        for o in c.get("outputs", [])
    )
    assert "| packaged teacher | ok |" in text, "the committed 00_setup has no checks table"
    fix_rows = [line for line in text.splitlines() if "| FIX |" in line]
    assert not fix_rows, f"committed 00_setup labels these FIX: {fix_rows}"
