"""Progress bars that are live in JupyterLab and leave nothing frozen in a saved notebook."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.std import tqdm as _text_tqdm

_OFF = {"1", "true", "yes", "on"}


def bars_disabled() -> bool:
    """True when env TQDM_DISABLE asks for no bars (headless runs: the course runner, CI)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in _OFF


def _in_notebook_kernel() -> bool:
    """True inside a Jupyter kernel whose tqdm.auto draws widgets (JupyterLab, Colab, papermill)."""
    from tqdm.auto import tqdm as auto_tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    return issubclass(auto_tqdm, notebook_tqdm)


def _notebook_bar_class() -> type:
    """A tqdm.notebook bar shown through a display handle and blanked when it closes.

    tqdm's own notebook bar stays in the saved notebook as a widget whose text fallback is the
    state it was drawn in ("0%| | 0/10"). Updating its display to an empty output on close
    removes it from the saved file as well as from the screen.
    """
    from IPython.display import display
    from tqdm.notebook import tqdm as notebook_tqdm

    class ClosingNotebookBar(notebook_tqdm):
        """A notebook progress bar whose output is emptied when it closes."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["display"] = False
            super().__init__(*args, **kwargs)
            self._handle = None if self.disable else display(self.container, display_id=True)

        def close(self) -> None:
            super().close()
            handle, self._handle = getattr(self, "_handle", None), None
            if handle is not None:
                handle.update({"text/plain": ""}, raw=True)

    return ClosingNotebookBar


def progress_bar(iterable: Iterable[Any], desc: str, enabled: bool = True, **kwargs: Any) -> Any:
    """A progress bar over `iterable`: a widget in notebooks, text in a terminal, none when disabled."""
    if not isinstance(desc, str):
        raise TypeError(f"desc must be a string (got {type(desc).__name__})")
    hidden = not enabled or bars_disabled()
    if hidden or not _in_notebook_kernel():
        return _text_tqdm(iterable, desc=desc, leave=False, disable=hidden, **kwargs)
    return _notebook_bar_class()(iterable, desc=desc, leave=False, **kwargs)
