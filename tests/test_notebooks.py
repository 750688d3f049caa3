"""Execute every course notebook (quick profile) with papermill, then validate it with nbval.

papermill runs the notebook with PROFILE="quick" injected; nbval then re-executes that output and
compares the cells marked `# NBVAL_CHECK_OUTPUT`, so those results must repeat exactly.
"""

import os
import subprocess
import sys

import pytest

from kdhelpers.course import execute_notebook, list_notebooks

NOTEBOOKS = list_notebooks()


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_quick_profile(notebook, tmp_path):
    executed = tmp_path / notebook.name
    results = tmp_path / "results"
    seconds = execute_notebook(notebook, executed, "quick", results, timeout_s=600)
    print(f"{notebook.name}: papermill quick run took {seconds:.1f} s")
    env = {**os.environ, "KD_RESULTS_DIR": str(results), "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(tmp_path), executed.name],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"nbval failed for {notebook.name}:\n{proc.stdout[-6000:]}"
