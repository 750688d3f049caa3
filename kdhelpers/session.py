"""One setup call for a notebook: resolve the profile, pick the device, seed, quiet the logs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdhelpers.device import get_device, seed_everything
from kdhelpers.profiles import resolve_profile


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
    seed_everything(seed)
    quiet_libraries()
    return Session(profile=resolved, device=chosen, seed=seed)
