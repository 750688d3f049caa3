"""kdhelpers.session: the one setup call of every notebook."""

import dataclasses
import random

import datasets
import numpy as np
import pytest
import torch
import transformers

from kdhelpers.session import FullProfileOnCPUWarning, Session, quiet_libraries, start


@pytest.fixture
def restore_logging():
    """Put transformers' verbosity and both libraries' progress bars back after a test."""
    level = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    ds_bars = datasets.is_progress_bar_enabled()
    yield
    transformers.logging.set_verbosity(level)
    if bars:
        transformers.utils.logging.enable_progress_bar()
    if ds_bars:
        datasets.enable_progress_bars()


def test_start_resolves_the_profile_and_prints_the_notebook_line(restore_logging):
    session = start("quick", 0, device="cpu")
    assert session == Session(profile="quick", device=torch.device("cpu"), seed=0)
    assert str(session) == "profile: quick   device: cpu"
    assert start("auto", 0, device="cpu").profile == "standard"
    with pytest.raises(dataclasses.FrozenInstanceError):
        session.profile = "full"  # type: ignore[misc]


def test_start_seeds_like_seed_everything(restore_logging):
    start("quick", 3, device="cpu")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    start("quick", 3, device="cpu")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_quiet_libraries_silences_warnings_and_progress_bars(restore_logging):
    transformers.logging.set_verbosity_warning()
    transformers.utils.logging.enable_progress_bar()
    datasets.enable_progress_bars()
    quiet_libraries()
    assert transformers.logging.get_verbosity() == transformers.logging.ERROR
    assert not transformers.utils.logging.is_progress_bar_enabled()
    assert not datasets.is_progress_bar_enabled()


@pytest.mark.parametrize(
    ("profile", "seed", "device", "word"),
    [
        ("fast", 0, "cpu", "PROFILE"),
        ("quick", -1, "cpu", "seed"),
        ("quick", 1.5, "cpu", "seed"),
        ("quick", 0, "tpu", "device"),
    ],
)
def test_start_names_the_bad_argument(profile, seed, device, word):
    with pytest.raises(ValueError, match=word):
        start(profile, seed, device=device)


def test_full_on_a_cpu_warns_that_it_runs_gpu_sized_settings(restore_logging):
    with pytest.warns(
        FullProfileOnCPUWarning, match=r'PROFILE = "full" runs the GPU-sized settings'
    ):
        session = start("full", 0, device="cpu")
    assert session.profile == "full"  # the learner's choice stands; it is only said plainly
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FullProfileOnCPUWarning)
        assert start("auto", 0, device="cpu").profile == "standard"
        assert start("standard", 0, device="cpu").profile == "standard"
