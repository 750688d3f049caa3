"""kdhelpers.transfer: chapter 05's transfer set and the rows of it that chapters 05-06 train on."""

import pytest
import torch

from kdhelpers.teacher import TextSplit
from kdhelpers.transfer import one_copy_rows, random_rows, transfer_examples, transfer_set


def split(prefix: str, n: int, label: int) -> TextSplit:
    """A tiny tokenized split of `n` snippets with token ids 101 ... 102."""
    return TextSplit(
        [f"{prefix}{i}" for i in range(n)],
        [f"text {i}" for i in range(n)],
        [[101, 1000 + i, 2000 + i, 3000 + i, 102] for i in range(n)],
        torch.full((n,), label, dtype=torch.long),
    )


@pytest.fixture
def splits():
    return {"train": split("t", 3, 1), "unlabeled": split("u", 2, 0)}


@pytest.mark.parametrize("copies", [0, 1, 3])
def test_one_copy_rows_keep_the_originals_and_the_first_noisy_copy(splits, copies):
    transfer, _ = transfer_set(splits, copies, mask_id=103, seed=0)
    rows = one_copy_rows(splits, copies)
    names = [transfer.ids[i] for i in rows]
    assert names[:5] == ["t0", "t1", "t2", "u0", "u1"]
    assert names[5:] == ([] if copies == 0 else [f"aug0:{n}" for n in names[:5]])
    assert max(rows) < len(transfer)


def test_random_rows_are_seeded_distinct_and_capped():
    assert random_rows(10, 4, seed=1) == random_rows(10, 4, seed=1)
    generator = torch.Generator().manual_seed(1)
    assert random_rows(10, 4, seed=1) == torch.randperm(10, generator=generator)[:4].tolist()
    assert sorted(random_rows(10, None)) == list(range(10)) == sorted(random_rows(10, 50))
    with pytest.raises(ValueError, match="n_rows"):
        random_rows(10, 0)


def test_transfer_examples_take_the_rows_with_their_labels_and_logits(splits):
    transfer, labels = transfer_set(splits, 1, mask_id=103, seed=0)
    logits = torch.arange(2 * len(transfer), dtype=torch.float).view(-1, 2)
    whole = transfer_examples(transfer, labels, logits)
    assert len(whole) == 10 and whole.labels.tolist() == [1, 1, 1] + [-1] * 7
    part = transfer_examples(transfer, labels, logits, [0, 6])
    assert part.input_ids == [transfer.input_ids[0], transfer.input_ids[6]]
    assert part.labels.tolist() == [1, -1] and torch.equal(part.teacher_logits, logits[[0, 6]])
    with pytest.raises(ValueError, match="labels and logits"):
        transfer_examples(transfer, labels[:3], logits)
