"""Words for results: verdicts on a chapter's targets, stated only for runs that can support them."""

from __future__ import annotations

from kdhelpers.profiles import PROFILES

#: What a verdict line says in the quick profile, which is a smoke test of the code, not a result.
NOT_JUDGED = "not judged in the quick profile (a smoke test of the code, not a result)"


def target_verdict(met: bool, profile: str) -> str:
    """'met' or 'not met' for a standard or full run; in 'quick', a phrase saying no verdict is given."""
    if not isinstance(met, bool):
        raise TypeError(f"met must be a bool (got {type(met).__name__})")
    if profile not in PROFILES or profile == "auto":
        raise ValueError(
            f"profile must be a resolved profile: quick, standard or full (got {profile!r})"
        )
    if profile == "quick":
        return NOT_JUDGED
    return "met" if met else "not met"
