"""Verdict lines: stated for standard and full runs, withheld in the quick smoke test."""

import pytest

from kdhelpers.targets import NOT_JUDGED, target_verdict


@pytest.mark.parametrize("profile", ["standard", "full"])
def test_real_runs_get_a_verdict(profile):
    assert target_verdict(True, profile) == "met"
    assert target_verdict(False, profile) == "not met"


@pytest.mark.parametrize("met", [True, False])
def test_quick_runs_state_no_verdict(met):
    text = target_verdict(met, "quick")
    assert text == NOT_JUDGED and "met" not in text.replace("not judged", "")


@pytest.mark.parametrize("bad", ["auto", "Quick", "", None])
def test_unresolved_or_unknown_profile_is_refused(bad):
    with pytest.raises(ValueError, match="profile"):
        target_verdict(True, bad)


def test_met_must_be_a_bool():
    with pytest.raises(TypeError, match="met"):
        target_verdict(1, "standard")
