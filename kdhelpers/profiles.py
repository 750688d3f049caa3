"""Run profiles: one PROFILE parameter sizes every notebook."""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from kdhelpers.device import get_device

PROFILES = ("quick", "standard", "full", "auto")

T = TypeVar("T")


def resolve_profile(profile: str, device: torch.device | str | None = None) -> str:
    """Turn 'auto' into 'full' on CUDA and 'standard' elsewhere; check the name."""
    if not isinstance(profile, str) or profile.lower() not in PROFILES:
        raise ValueError(f"PROFILE must be one of {PROFILES} (got {profile!r})")
    profile = profile.lower()
    if profile != "auto":
        return profile
    if device is None:
        device = get_device()
    return "full" if torch.device(device).type == "cuda" else "standard"


def choose(profile: str, *, quick: T, standard: T, full: T | None = None, device: Any = None) -> T:
    """Pick the settings for `profile` ('full' falls back to `standard` when not given)."""
    name = resolve_profile(profile, device)
    if name == "quick":
        return quick
    if name == "full" and full is not None:
        return full
    return standard
