"""Augmentation keeps special tokens, is seeded, and validates its arguments."""

import pytest

from kdhelpers.augment import augment_token_ids


def test_shapes_special_tokens_and_seed():
    ids = [[101, 5, 6, 7, 8, 9, 102], [101, 4, 102]]
    out = augment_token_ids(ids, n_copies=3, p_mask=0.5, p_ngram=0.5, seed=1)
    assert len(out) == 6
    for variant in out:
        assert variant[0] == 101 and variant[-1] == 102
        assert all(t in (5, 6, 7, 8, 9, 4, 103) for t in variant[1:-1])
    assert out == augment_token_ids(ids, n_copies=3, p_mask=0.5, p_ngram=0.5, seed=1)
    assert out != augment_token_ids(ids, n_copies=3, p_mask=0.5, p_ngram=0.5, seed=2)


def test_no_noise_is_identity_and_masking_rate():
    ids = [[101] + list(range(1000, 1200)) + [102]]
    assert augment_token_ids(ids, 2, p_mask=0.0, p_ngram=0.0) == ids * 2
    masked = augment_token_ids(ids, 1, p_mask=0.3, p_ngram=0.0, seed=0)[0]
    rate = masked.count(103) / 200
    assert 0.2 < rate < 0.4


def test_bad_arguments():
    with pytest.raises(ValueError, match="p_mask"):
        augment_token_ids([[1]], p_mask=1.5)
    with pytest.raises(ValueError, match="n_copies"):
        augment_token_ids([[1]], n_copies=-1)
