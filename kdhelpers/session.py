"""One setup call for a notebook: resolve the profile, pick the device, seed, quiet the logs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from kdhelpers.device import get_device, seed_everything
from kdhelpers.profiles import resolve_profile


class FullProfileOnCPUWarning(UserWarning):
    """PROFILE = "full" resolved on a machine without a GPU."""


@dataclass(frozen=True)
class Session:
    """What a notebook's setup cell decided: the resolved profile, the device and the seed."""

    profile: str
    device: torch.device
    seed: int

    def __str__(self) -> str:
        """The line a notebook prints after its setup: `profile: standard   device: cpu`."""
        return f"profile: {self.profile}   device: {self.device}"


def quiet_libraries() -> None:
    """Silence transformers' warnings and progress bars and datasets' progress bars (for good)."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def start(profile: str, seed: int, device: torch.device | str | None = None) -> Session:
    """Set up a notebook: pick the device, resolve `profile`, seed everything, quiet the logs."""
    chosen = get_device() if device is None else get_device(str(device))
    resolved = resolve_profile(profile, chosen)
    if resolved == "full" and chosen.type != "cuda":
        warnings.warn(
            f'PROFILE = "full" runs the GPU-sized settings (larger models, more data, more seeds) on '
            f"{chosen}: they were sized for a GPU and take many times the standard profile's minutes "
            'on a CPU. For a CPU, PROFILE = "standard" (or "auto") is the profile sized for it.',
            FullProfileOnCPUWarning,
            stacklevel=2,
        )
    seed_everything(seed)
    quiet_libraries()
    return Session(profile=resolved, device=chosen, seed=seed)
