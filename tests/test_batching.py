"""Length-bucketed batches: every example once per epoch, less padding, seeded, and no other change."""

import pytest
import torch

from kdhelpers.batching import LengthBucketSampler, TextExamples, make_loader


def _lengths(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 65, (n,), generator=g).tolist()


def test_every_example_once_per_epoch_in_full_batches_but_the_last():
    lengths = _lengths(1003)
    sampler = LengthBucketSampler(lengths, batch_size=32, seed=0, pool_batches=5)
    for _ in range(3):  # three epochs
        batches = list(sampler)
        assert len(batches) == len(sampler) == 32  # ceil(1003 / 32)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1003))
        assert sorted(len(b) for b in batches)[1:] == [32] * 31  # only one short batch


def test_batches_are_sorted_within_a_pool_and_cut_padding():
    lengths = _lengths(3200)
    batches = list(LengthBucketSampler(lengths, batch_size=32, seed=1, pool_batches=50))
    bucketed = sum(32 * max(lengths[i] for i in b) for b in batches)
    order = torch.randperm(3200, generator=torch.Generator().manual_seed(1)).tolist()
    plain = sum(32 * max(lengths[i] for i in order[s : s + 32]) for s in range(0, 3200, 32))
    real = sum(lengths)
    # a random batch of 32 pads to near the longest length; a bucketed one to near its own
    assert plain / real > 1.7 and bucketed / real < 1.1
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spreads) <= 3


def test_the_order_is_seeded_and_changes_every_epoch():
    lengths = _lengths(500)
    a = LengthBucketSampler(lengths, 16, seed=7)
    b = LengthBucketSampler(lengths, 16, seed=7)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b
    assert list(a) != first_a  # the next epoch is another order
    assert list(LengthBucketSampler(lengths, 16, seed=8)) != first_a
    # the pools mix the data set: consecutive batches are not simply increasing in length
    means = [sum(lengths[i] for i in bt) / len(bt) for bt in first_a]
    assert means != sorted(means)


def test_make_loader_bucket_keeps_each_example_with_its_label_and_logits():
    ids = [[101] + [5] * n + [102] for n in _lengths(200)]
    labels = torch.arange(200) % 2
    logits = torch.randn(200, 2)
    loader = make_loader(TextExamples(ids, labels, logits), 16, shuffle=True, seed=0, bucket=True)
    seen = set()
    for batch in loader:
        for row, i in enumerate(batch["index"].tolist()):
            seen.add(i)
            n = int(batch["attention_mask"][row].sum())
            assert batch["input_ids"][row, :n].tolist() == ids[i]
            assert int(batch["labels"][row]) == int(labels[i])
            assert torch.equal(batch["teacher_logits"][row], logits[i])
    assert seen == set(range(200))


def test_bad_bucket_arguments_are_named():
    data = TextExamples([[1, 2, 3]] * 4)
    with pytest.raises(ValueError, match="shuffle=True"):
        make_loader(data, 2, bucket=True)
    with pytest.raises(TypeError, match="bucket"):
        make_loader(data, 2, shuffle=True, bucket="yes")
    with pytest.raises(ValueError, match="lengths"):
        LengthBucketSampler([], 2)
    with pytest.raises(ValueError, match="pool_batches"):
        LengthBucketSampler([1, 2], 2, pool_batches=0)
