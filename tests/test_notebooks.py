"""Execute every course notebook (quick profile) with papermill, then validate it with nbval.

papermill runs the notebook with PROFILE="quick" injected; nbval then re-executes that output and
compares the cells tagged `nbval-check-output`, so those results must repeat exactly.
"""

import os
import subprocess
import sys

import pytest

from kdhelpers.course.runner import execute_notebook, list_notebooks, temporary_env

NOTEBOOKS = list_notebooks()


@pytest.fixture(scope="session")
def shared_dirs(tmp_path_factory):
    """Checkpoints, logit cache and results shared by the notebooks of one test session (in order)."""
    root = tmp_path_factory.mktemp("course")
    return {
        "KD_CHECKPOINT_DIR": str(root / "checkpoints"),
        "KD_CACHE_DIR": str(root / "cache"),
        "KD_RESULTS_DIR": str(root / "results"),
    }


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_quick_profile(notebook, tmp_path, shared_dirs):
    executed = tmp_path / notebook.name
    with temporary_env(**shared_dirs):
        seconds = execute_notebook(
            notebook, executed, "quick", shared_dirs["KD_RESULTS_DIR"], timeout_s=600
        )
    print(f"{notebook.name}: papermill quick run took {seconds:.1f} s")
    env = {**os.environ, **shared_dirs, "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(tmp_path),
            executed.name,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"nbval failed for {notebook.name}:\n{proc.stdout[-6000:]}"
