"""The benchmark script runs end to end in its quick mode and writes its files (figures are not asserted)."""

import json
import subprocess
import sys

from kdhelpers.paths import project_root


def test_benchmark_quick_smoke(tmp_path):
    script = project_root() / "benchmarks" / "bench_distill.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads((tmp_path / "results-quick.json").read_text())
    assert set(data["epochs"]) == {
        "labels only",
        "KD, cached teacher logits",
        "KD, teacher run online",
    }
    assert all(v > 0 for v in data["epochs"].values())
    assert [m["model"] for m in data["models"]][0].startswith("teacher")
    assert len(data["targets"]) >= 4
    assert "## Targets" in (tmp_path / "results-quick.md").read_text()
