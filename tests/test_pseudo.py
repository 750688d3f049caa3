"""Teacher inference, the logit cache's integrity, and pseudo-label quality reports."""

import math

import pytest
import torch

from kdhelpers.batching import TextExamples, make_loader
from kdhelpers.models import BagOfEmbeddingsStudent
from kdhelpers.pseudo import (
    cache_logits,
    confident,
    coverage_accuracy,
    hard_labels,
    length_sorted_batches,
    predict_logits,
    quality_by_confidence,
    soft_labels,
    top_probability,
)


def tiny_teacher(seed=0):
    torch.manual_seed(seed)
    return BagOfEmbeddingsStudent(40, embed_dim=8, hidden=8, dropout=0.5)


def examples(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = [
        torch.randint(1, 40, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]
    return [f"ex:{i}" for i in range(n)], ids


def test_predict_matches_one_by_one_and_ignores_batching():
    teacher = tiny_teacher()
    _, ids = examples()
    one_by_one = torch.cat([teacher.eval()(torch.tensor([x])) for x in ids]).detach()
    teacher.train()  # predict_logits must switch to eval (dropout off) and back
    sorted_out = predict_logits(teacher, ids, batch_size=7, device="cpu", sort_by_length=True)
    naive_out = predict_logits(teacher, ids, batch_size=4, device="cpu", sort_by_length=False)
    torch.testing.assert_close(sorted_out, one_by_one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(naive_out, one_by_one, rtol=1e-5, atol=1e-6)
    assert teacher.training
    with pytest.raises(ValueError, match="empty"):
        predict_logits(teacher, [], device="cpu")


def test_length_sorted_batches_cover_every_index_once():
    batches = length_sorted_batches([3, 9, 1, 4, 4, 7], 4)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0][0] == 1  # longest first


def test_cache_hit_and_every_kind_of_staleness(tmp_path):
    teacher = tiny_teacher()
    ids, tokens = examples()
    first = cache_logits(teacher, ids, tokens, tmp_path, progress=False)
    assert not first.from_cache
    again = cache_logits(teacher, ids, tokens, tmp_path, progress=False)
    assert again.from_cache and torch.equal(again.logits, first.logits)
    # computed or read back, the logits are ordinary tensors that training code may use
    assert not first.logits.is_inference() and not again.logits.is_inference()
    (first.logits * torch.ones(1, requires_grad=True)).sum().backward()
    # the first call's compute time is stored with the logits and read back exactly
    assert first.compute_seconds is not None and first.compute_seconds > 0
    assert again.compute_seconds == first.compute_seconds

    # a changed teacher
    changed = tiny_teacher()
    with torch.no_grad():
        changed.mlp[-1].bias += 0.01
    assert not cache_logits(changed, ids, tokens, tmp_path, progress=False).from_cache
    # changed content of one example
    tokens2 = [list(t) for t in tokens]
    tokens2[5][0] = (tokens2[5][0] % 39) + 1
    assert not cache_logits(teacher, ids, tokens2, tmp_path, progress=False).from_cache
    # the same examples, re-ordered
    order = list(reversed(range(len(ids))))
    reordered = cache_logits(
        teacher, [ids[i] for i in order], [tokens[i] for i in order], tmp_path, progress=False
    )
    assert not reordered.from_cache
    torch.testing.assert_close(reordered.logits, first.logits[order])
    # other ids for the same texts
    assert not cache_logits(
        teacher, [i + "x" for i in ids], tokens, tmp_path, progress=False
    ).from_cache


def test_truncated_cache_file_is_recomputed(tmp_path):
    teacher = tiny_teacher()
    ids, tokens = examples()
    first = cache_logits(teacher, ids, tokens, tmp_path, progress=False)
    data = first.path.read_bytes()
    first.path.write_bytes(data[: len(data) // 2])
    again = cache_logits(teacher, ids, tokens, tmp_path, progress=False)
    assert not again.from_cache and torch.equal(again.logits, first.logits)
    assert cache_logits(teacher, ids, tokens, tmp_path, progress=False).from_cache
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cache_rejects_bad_input(tmp_path):
    teacher = tiny_teacher()
    ids, tokens = examples()
    with pytest.raises(ValueError, match="same length"):
        cache_logits(teacher, ids[:-1], tokens, tmp_path)
    with pytest.raises(ValueError, match="name"):
        cache_logits(teacher, ids, tokens, tmp_path, name="../x")


def test_shuffled_loader_pairs_each_example_with_its_own_logits(tmp_path):
    teacher = tiny_teacher()
    ids, tokens = examples(50)
    logits = cache_logits(teacher, ids, tokens, tmp_path, progress=False).logits
    data = TextExamples(tokens, teacher_logits=logits)
    teacher.eval()
    for batch in make_loader(data, batch_size=8, shuffle=True, seed=1):
        with torch.no_grad():
            fresh = teacher(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(batch["teacher_logits"], fresh, rtol=1e-5, atol=1e-6)


def test_pseudo_labels_and_quality_reports():
    logits = torch.tensor([[3.0, 0.0], [0.0, 0.2], [0.0, 5.0], [1.0, 0.0]])
    gold = torch.tensor([0, 0, 1, 1])
    assert hard_labels(logits).tolist() == [0, 1, 1, 0]
    torch.testing.assert_close(soft_labels(logits, 2.0).sum(-1), torch.ones(4))
    assert confident(logits, 0.9).tolist() == [True, False, True, False]
    top, cls = top_probability(logits)
    assert cls.tolist() == [0, 1, 1, 0]
    torch.testing.assert_close(top, torch.tensor([1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-0.2)),
                                                  1 / (1 + math.exp(-5)), 1 / (1 + math.exp(-1))]))  # fmt: skip
    rows = coverage_accuracy(logits, gold, [0.0, 0.9, 0.999])
    assert rows[0] == {"threshold": 0.0, "coverage": 1.0, "accuracy": 0.5, "n": 4}
    assert rows[1]["coverage"] == 0.5 and rows[1]["accuracy"] == 1.0
    assert rows[2]["n"] == 0
    bins = quality_by_confidence(logits, gold, n_bins=2)
    assert sum(b["n"] for b in bins) == 4
    with pytest.raises(ValueError, match="threshold"):
        confident(logits, 1.5)
    with pytest.raises(ValueError, match="gold"):
        coverage_accuracy(logits, gold[:2], [0.5])


def _rewrite_cache(path, transform=None, drop=()):
    """Rewrite a cache file as a valid safetensors file with changed values or metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        logits = fh.get_tensor("logits")
    for key in drop:
        meta.pop(key, None)
    save_file({"logits": transform(logits) if transform else logits}, str(path), metadata=meta)


@pytest.mark.parametrize("damage", ["flip-sign", "reorder-rows", "one-value", "old-format"])
def test_values_changed_inside_a_valid_cache_file_are_recomputed(tmp_path, damage):
    teacher = tiny_teacher()
    ids, tokens = examples()
    first = cache_logits(teacher, ids, tokens, tmp_path, progress=False)
    if damage == "flip-sign":
        _rewrite_cache(first.path, lambda x: -x)
    elif damage == "reorder-rows":
        _rewrite_cache(first.path, lambda x: x.flip(0).contiguous())
    elif damage == "one-value":
        _rewrite_cache(
            first.path,
            lambda x: x.index_put((torch.tensor([3]), torch.tensor([1])), torch.tensor(0.5)),
        )
    else:  # a file of the earlier format: the same key and values but no digest
        _rewrite_cache(first.path, drop=("logits_sha256", "format"))
    again = cache_logits(teacher, ids, tokens, tmp_path, progress=False)
    assert not again.from_cache and torch.equal(again.logits, first.logits)
    assert cache_logits(teacher, ids, tokens, tmp_path, progress=False).from_cache


def test_cache_in_an_impossible_folder_names_kd_cache_dir(tmp_path, monkeypatch):
    from kdhelpers.paths import UnwritableFolderError

    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("KD_CACHE_DIR", str(blocker))
    teacher = tiny_teacher()
    ids, tokens = examples()
    for folder in (blocker, blocker / "sub"):
        with pytest.raises(UnwritableFolderError, match="KD_CACHE_DIR") as info:
            cache_logits(teacher, ids, tokens, folder, progress=False)
        assert str(folder) in str(info.value)


def test_a_killed_writers_temp_file_is_cleaned_up(tmp_path):
    import os
    import time

    from kdhelpers.paths import _host

    teacher = tiny_teacher()
    ids, tokens = examples()
    dead = tmp_path / f".teacher-0123456789abcdef.safetensors.{_host()}-999999999.abcd.tmp"
    live = tmp_path / f".teacher-0123456789abcdef.safetensors.{_host()}-{os.getpid()}.efgh.tmp"
    for p in (dead, live):
        p.write_bytes(b"half")
        os.utime(p, (time.time() - 600, time.time() - 600))
    cache_logits(teacher, ids, tokens, tmp_path, progress=False)
    assert not dead.exists() and live.exists()
