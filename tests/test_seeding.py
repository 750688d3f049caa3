"""Seeding goes through one helper, `device.seeded`, and no library call reseeds the caller's RNG."""

import ast
from pathlib import Path

import pytest
import torch

from kdhelpers.batching import TextExamples, make_loader
from kdhelpers.chapters.digits import make_image_student
from kdhelpers.chapters.features import FeatureStudent
from kdhelpers.chapters.lm.model import make_lm
from kdhelpers.device import seeded
from kdhelpers.students import make_student
from kdhelpers.train import TrainConfig, fit

PACKAGE = Path(__file__).resolve().parents[1] / "kdhelpers"


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


BUILDERS = {
    "bag student": lambda seed: make_student("bag", 50, seed=seed, embed_dim=8, hidden=8),
    "cnn student": lambda seed: make_student("cnn", 50, seed=seed),
    "tiny-bert student": lambda seed: make_student(
        "tiny-bert", 50, seed=seed, hidden=16, layers=1, heads=2, intermediate=32
    ),
    "image student": lambda seed: make_image_student(8, seed=seed),
    "language model": lambda seed: make_lm(12, n_layer=1, n_embd=8, n_head=2, seed=seed),
    "feature student": lambda seed: FeatureStudent(
        make_student("tiny-bert", 50, seed=seed, hidden=16, layers=1, heads=2, intermediate=32),
        "mse",
        [(1, 1)],
        teacher_width=24,
        teacher_layers=1,
        seed=seed,
    ),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_builders_repeat_on_their_seed_and_leave_the_callers_rng_alone(name):
    build = BUILDERS[name]
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first = _weights(build(3))
    assert torch.equal(torch.get_rng_state(), state), f"{name} changed the caller's RNG"
    torch.manual_seed(99)  # another caller state: the same seed still builds the same model
    assert _same(first, _weights(build(3)))
    assert not _same(first, _weights(build(4)))


def test_seeded_gives_the_state_back_even_when_the_block_fails():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    with seeded(0):
        inside = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), state)
    with seeded(0):
        assert torch.equal(torch.rand(3), inside)
    with pytest.raises(RuntimeError, match="boom"):
        with seeded(1):
            torch.rand(2)
            raise RuntimeError("boom")
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(TypeError, match="seed"):
        with seeded(1.5):
            pass


def _fit_once(config: TrainConfig) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (48, 6), generator=gen).tolist()
    labels = torch.randint(0, 2, (48,), generator=gen)
    model = make_student("bag", 50, seed=0, embed_dim=8, hidden=8, dropout=0.5)
    loader = make_loader(TextExamples(ids, labels), 16, shuffle=True, seed=0)
    fit(model, loader, None, config=config, device="cpu")
    return _weights(model)


def test_fit_with_a_seed_repeats_whatever_the_callers_rng_and_gives_it_back():
    config = TrainConfig(epochs=2, lr=1e-2, seed=7, use_amp=False)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = _fit_once(config)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(2)
    assert _same(first, _fit_once(config))
    # without a seed the dropout masks come from the caller's RNG, so the caller's seed matters
    unseeded = TrainConfig(epochs=2, lr=1e-2, use_amp=False)
    torch.manual_seed(1)
    a = _fit_once(unseeded)
    torch.manual_seed(2)
    assert not _same(a, _fit_once(unseeded))


def test_only_the_seeding_helpers_call_torch_manual_seed():
    """torch.manual_seed appears in device.py only (seeded, seed_everything), nowhere else in the package."""
    callers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("manual_seed", "manual_seed_all", "seed")
                and isinstance(node.func.value, (ast.Name, ast.Attribute))
                and ast.unparse(node.func.value) in ("torch", "torch.cuda", "random", "np.random")
            ):
                callers.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert callers and all(c.startswith("device.py:") for c in callers), callers
