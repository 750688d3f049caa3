"""Progress bars: live in a notebook kernel, nothing frozen in the saved notebook."""

import re

import nbformat
import pytest
from nbclient import NotebookClient

from kdhelpers.progress import bars_disabled, progress_bar

FROZEN_BAR = re.compile(r"\b(?!100%)\d{1,3}%\|[^|\n]*\|\s*\d+/\d+")


def _saved_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            parts.append("".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


@pytest.mark.parametrize("early_stop", [False, True], ids=["full-loop", "loop-left-early"])
def test_executed_notebook_keeps_no_frozen_bar(monkeypatch, early_stop):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    body = (
        "bar = progress_bar(range(50), 'epoch 1/1')\n"
        "for i in bar:\n"
        "    time.sleep(0.001)\n"
        + ("    if i == 3:\n        break\nbar.close()\n" if early_stop else "")
        + "print('done')"
    )
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import time\nfrom kdhelpers.progress import progress_bar"),
            nbformat.v4.new_code_cell(body),
        ]
    )
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    saved = _saved_text(nb)
    assert "done" in saved
    assert not FROZEN_BAR.search(saved), f"a frozen bar was saved: {saved!r}"
    widgets = [
        o
        for c in nb.cells
        for o in c.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert not widgets, "the closed bar's widget is still in the saved outputs"


def test_plain_tqdm_notebook_bar_would_be_saved_frozen(monkeypatch):
    """The reference behaviour we work around: tqdm.auto leaves '0%|...' in the saved notebook."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "from tqdm.auto import tqdm\nfor i in tqdm(range(5), leave=False):\n    pass"
            )
        ]
    )
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert FROZEN_BAR.search(_saved_text(nb))


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert bars_disabled()
    bar = progress_bar(range(3), "x")
    assert bar.disable and list(bar) == [0, 1, 2]


def test_desc_must_be_text():
    with pytest.raises(TypeError, match="desc"):
        progress_bar(range(3), 3)
