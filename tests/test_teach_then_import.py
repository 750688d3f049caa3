"""Teach, then import: a mechanism a chapter writes in plain code is the same as the kdhelpers code
later chapters import. Notebook cells tagged `teach` hold the taught definitions (functions only);
each pair below runs the notebook's definition and the package's on the same seeded inputs."""

import ast
import json
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from kdhelpers.losses import distillation_loss
from kdhelpers.paths import notebooks_dir

TAG = "teach"


def taught_sources(notebook: str) -> list[str]:
    """The sources of a notebook's cells tagged `teach`, in order."""
    cells = json.loads((notebooks_dir() / f"{notebook}.ipynb").read_text())["cells"]
    return [
        "".join(c["source"])
        for c in cells
        if c["cell_type"] == "code" and TAG in c.get("metadata", {}).get("tags", [])
    ]


def taught(sources: list[str]) -> dict[str, object]:
    """Execute taught cells (definitions only) in a namespace with the usual imports."""
    namespace: dict[str, object] = {"torch": torch, "F": F, "math": math}
    for source in sources:
        for node in ast.parse(source).body:
            allowed = (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
            if not isinstance(node, allowed) and not (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            ):
                raise AssertionError(
                    f"a cell tagged {TAG!r} runs code at line {node.lineno}: keep it to definitions"
                )
        exec(compile(source, f"<{TAG} cell>", "exec"), namespace)
    return namespace


def kd_loss_gap(notebook_fn: Callable, package_fn: Callable) -> float:
    """Largest difference of loss and student gradient between the two KD losses on seeded inputs."""
    gap = 0.0
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        n, k = 8, 2 + 3 * seed
        z_t = torch.randn(n, k, generator=g) * 3
        z_s0 = torch.randn(n, k, generator=g) * 3
        labels = torch.randint(0, k, (n,), generator=g)
        for alpha in (0.0, 0.3, 1.0):
            for T in (1.0, 2.0, 4.0):
                out = []
                for fn in (notebook_fn, package_fn):
                    z_s = z_s0.clone().requires_grad_(True)
                    loss = fn(z_s, z_t, labels, alpha, T)
                    (grad,) = torch.autograd.grad(loss, z_s)
                    out.append((loss.detach(), grad))
                gap = max(gap, (out[0][0] - out[1][0]).abs().item())
                gap = max(gap, (out[0][1] - out[1][1]).abs().max().item())
    return gap


def package_kd_loss(z_s, z_t, labels, alpha, T):
    return distillation_loss(z_s, z_t, labels, alpha=alpha, temperature=T)


PAIRS = {
    # chapter 02 writes the loss from scratch; every later chapter imports losses.distillation_loss
    "02 KD loss": ("02_the-loss", "kd_loss_from_scratch", package_kd_loss, kd_loss_gap),
}


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_the_notebook_and_the_package_hold_the_same_mechanism(pair):
    notebook, name, package_fn, gap = PAIRS[pair]
    namespace = taught(taught_sources(notebook))
    assert name in namespace, f"{notebook} has no cell tagged {TAG!r} defining {name}"
    assert gap(namespace[name], package_fn) < 1e-5


def test_a_deliberate_edit_of_the_notebook_side_is_caught():
    sources = taught_sources("02_the-loss")
    edited = [s.replace("soft = T**2 * kl.mean()", "soft = T * kl.mean()") for s in sources]
    assert edited != sources, "the edit no longer applies: update this test with the notebook"
    assert kd_loss_gap(taught(edited)["kd_loss_from_scratch"], package_kd_loss) > 1e-3


def test_a_deliberate_edit_of_the_package_side_is_caught():
    namespace = taught(taught_sources("02_the-loss"))

    def drifted(z_s, z_t, labels, alpha, T):  # the package's loss with the T^2 factor dropped
        kd = distillation_loss(z_s, z_t, labels, alpha=0.0, temperature=T) / T**2
        ce = F.cross_entropy(z_s, labels)
        return alpha * ce + (1 - alpha) * kd

    assert kd_loss_gap(namespace["kd_loss_from_scratch"], drifted) > 1e-3


def test_taught_cells_may_hold_definitions_only():
    with pytest.raises(AssertionError, match="keep it to definitions"):
        taught(["def f():\n    return 1\n\nprint(f())\n"])
