"""Noisy Student as Xie et al. describe it: filtered and balanced pseudo-labels, labelled source rows
mixed in, input noise on the student only, label-free selection on a held-out pool slice."""

import math

import pytest
import torch

from kdhelpers.chapters.selftrain import (
    NoisyStudentConfig,
    agreement_split,
    clean_logits,
    drop_tokens,
    filter_and_balance,
    hold_out,
    noisy_student_examples,
    noisy_student_rounds,
    train_noisy_student,
)
from kdhelpers.losses import kd_kl
from kdhelpers.students import StudentConfig, make_student
from kdhelpers.teacher import TextSplit
from kdhelpers.train import labels_or_teacher_loss
from kdhelpers.transfer import random_rows


def split_of(n, seed=0, labelled=True, prefix="x"):
    g = torch.Generator().manual_seed(seed)
    ids, gold = [], []
    for _ in range(n):
        body = torch.randint(3, 40, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g)
        body = body.tolist()
        ids.append([1] + body + [2])
        gold.append(int(sum(t < 20 for t in body) > len(body) / 2))
    labels = torch.tensor(gold) if labelled else torch.full((n,), -1)
    return TextSplit([f"{prefix}:{i}" for i in range(n)], [""] * n, ids, labels)


def rule_logits(split, scale=6.0):
    """A teacher that follows the labelling rule of split_of (confident far from the boundary)."""
    share = torch.tensor([sum(t < 20 for t in x[1:-1]) / (len(x) - 2) for x in split.input_ids])
    return torch.stack([torch.zeros(len(split)), scale * (share - 0.5)], 1)


def test_labels_or_teacher_loss_against_a_row_by_row_reference():
    torch.manual_seed(0)
    logits, teacher = torch.randn(5, 3), torch.randn(5, 3)
    labels = torch.tensor([2, -1, 0, -1, -1])
    got = labels_or_teacher_loss(logits, {"labels": labels, "teacher_logits": teacher})
    rows = []
    for z, t, y in zip(logits.double(), teacher.double(), labels.tolist(), strict=True):
        log_q = z - torch.logsumexp(z, 0)
        if y >= 0:
            rows.append(-float(log_q[y]))
        else:
            p = torch.softmax(t, 0)
            rows.append(float((p * (p.log() - log_q)).sum()))
    assert math.isclose(float(got), sum(rows) / 5, rel_tol=1e-6)
    # all labelled: plain cross-entropy; none labelled: KL at T = 1
    all_lab = labels_or_teacher_loss(logits, {"labels": torch.tensor([0, 1, 2, 0, 1])})
    assert math.isclose(
        float(all_lab),
        float(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1]))),
        rel_tol=1e-6,
    )
    none = labels_or_teacher_loss(
        logits, {"labels": torch.full((5,), -1), "teacher_logits": teacher}
    )
    assert math.isclose(float(none), float(kd_kl(logits, teacher, temperature=1.0)), rel_tol=1e-6)
    with pytest.raises(ValueError, match="teacher logits"):
        labels_or_teacher_loss(logits, {"labels": labels})


def test_filter_and_balance_exact_rows():
    # probabilities of class 1: rows 0-3 predict class 1, rows 4-6 class 0
    p1 = torch.tensor([0.95, 0.6, 0.99, 0.8, 0.1, 0.45, 0.3])
    logits = torch.stack([torch.zeros(7), torch.log(p1 / (1 - p1))], 1)
    # threshold 0.7 keeps rows 0, 2, 3 (class 1) and 4, 6 (class 0): 5 rows, 2 per class
    assert filter_and_balance(logits, 0.7) == [4, 6, 2, 0]
    # 3 per class: class 0 has only two confident rows, so its most confident one repeats
    assert filter_and_balance(logits, 0.7, per_class=3) == [4, 6, 4, 2, 0, 3]
    assert filter_and_balance(logits, 0.0, per_class=1) == [4, 2]
    assert filter_and_balance(logits, 0.999) == []
    with pytest.raises(ValueError, match="threshold"):
        filter_and_balance(logits, 1.5)
    with pytest.raises(ValueError, match="2-D"):
        filter_and_balance(p1, 0.5)


def test_hold_out_is_a_seeded_partition_and_agreement_split_uses_the_teacher():
    pool = split_of(20, labelled=False)
    rest, held = hold_out(pool, 5, seed=3)
    assert len(held) == 5 and len(rest) == 15
    assert sorted(rest.ids + held.ids, key=lambda s: int(s[2:])) == pool.ids
    assert hold_out(pool, 5, seed=3)[1].ids == held.ids != hold_out(pool, 5, seed=4)[1].ids
    with pytest.raises(ValueError, match="n_select"):
        hold_out(pool, 20)
    logits = rule_logits(held)
    chosen = agreement_split(held, logits)
    assert torch.equal(chosen.gold, logits.argmax(-1)) and chosen.ids == held.ids
    with pytest.raises(ValueError, match="shape"):
        agreement_split(held, logits[:2])


def test_noisy_student_examples_rows_targets_and_noise():
    pool, source = split_of(30, seed=1, labelled=False, prefix="p"), split_of(10, seed=2)
    logits = rule_logits(pool)
    config = NoisyStudentConfig(threshold=0.8, source_rows=4, p_drop=0.3)
    data, counts = noisy_student_examples(pool, logits, source, config, special_ids=(1, 2), seed=0)
    chosen = filter_and_balance(logits, 0.8)
    confident = int((torch.softmax(logits, -1).max(-1).values >= 0.8).sum())
    assert counts == {
        "pool": 30,
        "confident": confident,
        "pseudo_rows": len(chosen),
        "source_rows": 4,
    }
    assert len(data) == len(chosen) + 4
    assert (data.labels[: len(chosen)] == -1).all() and (data.labels[len(chosen) :] >= 0).all()
    torch.testing.assert_close(data.teacher_logits[: len(chosen)], logits[chosen])
    assert (data.teacher_logits[len(chosen) :] == 0).all()
    picked = sorted(random_rows(10, 4, 0))
    assert torch.equal(data.labels[len(chosen) :], source.gold[picked])
    clean = [pool.input_ids[i] for i in chosen] + [source.input_ids[i] for i in picked]
    assert data.input_ids == drop_tokens(clean, 0.3, 1, special_ids=(1, 2), seed=0)
    assert data.input_ids != clean, "every row goes through the noise"
    assert all(x[0] == 1 and x[-1] == 2 for x in data.input_ids), "special ids kept"
    with pytest.raises(ValueError, match="threshold"):
        noisy_student_examples(pool, torch.zeros(30, 2), source, config, special_ids=(1, 2))
    with pytest.raises(ValueError, match="labelled"):
        noisy_student_examples(pool, logits, pool, config, special_ids=(1, 2))
    with pytest.raises(ValueError, match="rows"):
        noisy_student_examples(pool, logits[:3], source, config, special_ids=(1, 2))


def test_noisy_student_config_names_the_bad_argument():
    with pytest.raises(ValueError, match="threshold"):
        NoisyStudentConfig(threshold=2.0)
    with pytest.raises(ValueError, match="p_drop"):
        NoisyStudentConfig(p_drop=1.0)
    with pytest.raises(ValueError, match="source_rows"):
        NoisyStudentConfig(source_rows=0)
    with pytest.raises(TypeError, match="training"):
        NoisyStudentConfig(training={"epochs": 3})


def test_noisy_student_learns_its_teacher_and_chains_rounds():
    pool, source = split_of(320, seed=1, labelled=False, prefix="p"), split_of(32, seed=2)
    rest, held = hold_out(pool, 64, seed=0)
    test = split_of(48, seed=5, prefix="t")
    config = NoisyStudentConfig(
        threshold=0.6, p_drop=0.1, training=StudentConfig(epochs=6, lr=2e-2, seed=0)
    )

    def new(seed):
        return make_student("bag", 40, seed=seed, embed_dim=8, hidden=16)

    student = new(0)
    chooser = agreement_split(held, rule_logits(held))
    hist = train_noisy_student(
        student, rest, rule_logits(rest), source, chooser, "cpu", config, special_ids=(1, 2)
    )
    assert hist["epoch_limit"] == 6 and 1 <= hist["best_epoch"] <= 6
    assert hist["best_val_accuracy"] >= 0.7, (
        "the student should agree with its teacher on held-out text"
    )

    class Rule(torch.nn.Module):  # the teacher of round 1, as a model
        def forward(self, input_ids, attention_mask=None):
            low = ((input_ids < 20) & (input_ids > 2)).float().sum(1)
            n = (input_ids > 2).float().sum(1).clamp(min=1)
            return torch.stack([torch.zeros(len(n)), 6 * (low / n - 0.5)], 1)

    rows = noisy_student_rounds(
        {0: Rule(), 1: Rule()}, new, rest, held, source, test, 2, "cpu", config, special_ids=(1, 2)
    )
    assert [(r["round"], r["seed"]) for r in rows] == [
        (0, 0),
        (1, 0),
        (2, 0),
        (0, 1),
        (1, 1),
        (2, 1),
    ]
    assert rows[0]["agrees_with_teacher"] == 1.0 and rows[0]["test_accuracy"] > 0.9
    for r in rows[1:3] + rows[4:]:
        assert r["best_epoch"] <= r["epoch_limit"] == 6 and r["source_rows"] == 32
        assert r["test_accuracy"] > 0.6
    with pytest.raises(ValueError, match="teachers"):
        noisy_student_rounds({}, new, rest, held, source, test, 1, "cpu", special_ids=(1, 2))
    # a round-0 labeller (e.g. one that reads a logit cache) is asked for every round-0 teacher's
    # logits, each part named, and its answers are the ones used; students (round 2's teacher,
    # round 1's student, included) are labelled afresh
    asked = []

    def label(model, split, part):
        asked.append((model.name, len(split), part))
        return clean_logits(model, split, "cpu")

    two = {0: Rule(), 1: Rule()}
    two[0].name, two[1].name = "teacher 0", "teacher 1"
    args = (new, rest, held, source, test, 2, "cpu", config)
    with_label = noisy_student_rounds(two, *args, special_ids=(1, 2), round0_logits=label)
    assert with_label == noisy_student_rounds(two, *args, special_ids=(1, 2))
    assert asked == [(t, n, part) for t in ("teacher 0", "teacher 1")
                     for n, part in ((len(test), "test"), (len(rest), "pool"), (len(held), "select"))]  # fmt: skip

    def flipped(model, split, part):  # a labeller that says the opposite of the model
        return -clean_logits(model, split, "cpu")

    rows_flipped = noisy_student_rounds(two, *args, special_ids=(1, 2), round0_logits=flipped)
    for k in (0, 3):  # each seed's round 0 (ties stay 0)
        assert rows_flipped[k]["test_accuracy"] < 0.5 < with_label[k]["test_accuracy"]
    # round 1 learned other pseudo-labels and was chosen on another agreement split
    for key in ("test_accuracy", "selection_agreement"):
        assert rows_flipped[1][key] != with_label[1][key], key


def test_target_domain_hides_labels_holds_out_a_slice_and_keeps_the_test_split():
    from kdhelpers.chapters.selftrain import target_domain
    from kdhelpers.data import load_sentiment
    from kdhelpers.models import load_teacher

    _, tok = load_teacher()
    sizes = dict(n_train=30, n_validation=10, n_test=20)
    got = target_domain("amazon", tok, 32, select_share=0.25, seed=1, pool_size=40, **sizes)
    assert (len(got.pool), len(got.select), len(got.test)) == (30, 10, 20)
    assert (got.pool.gold == -1).all() and (got.select.gold == -1).all()
    assert not set(got.pool.ids) & set(got.select.ids)
    raw = load_sentiment("amazon", seed=1, **sizes)
    assert got.test.ids == list(raw["test"]["id"])
    assert got.test.gold.tolist() == list(raw["test"]["label"])
    held_back = set(raw["test"]["id"]) | set(raw["validation"]["id"])
    assert not set(got.pool.ids + got.select.ids) & held_back
    assert target_domain("amazon", tok, 32, 0.25, 1, 40, **sizes).select.ids == got.select.ids
    with pytest.raises(ValueError, match="select_share"):
        target_domain("amazon", tok, 32, select_share=1.5, **sizes)
