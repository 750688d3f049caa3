"""Tests for kdhelpers.chapters.digits: data splits, models, the trainer and the held-out-class bias."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from kdhelpers.chapters import digits
from kdhelpers.losses import distillation_loss


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest (and most predictably) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return digits.load_splits("digits", seed=0)


def toy(n=60, features=4, classes=3, seed=0):
    """Small linearly separable-ish problem."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, features, generator=gen) * 0.3
    x[torch.arange(n), y % features] += 2.0
    return x, y


# --------------------------------------------------------------------------- data


def test_load_digit_images_is_the_bundled_scikit_learn_set():
    x, y, shape = digits.load_digit_images("digits")
    assert x.shape == (1797, 64) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert shape == (8, 8)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist()[:3] == [178, 182, 177]


def test_load_digit_images_rejects_unknown_source():
    with pytest.raises(ValueError, match="source"):
        digits.load_digit_images("cifar")


def test_splits_have_exact_seeded_sizes_and_are_disjoint(data):
    assert data.sizes() == {"train": 629, "transfer": 539, "val": 178, "test": 451}
    assert data.n_classes == 10 and data.n_features == 64 and data.image_shape == (8, 8)
    x_all, _, _ = digits.load_digit_images("digits")
    rows = set()
    for split in digits.SPLITS:
        x, _ = data.get(split)
        for row in x:
            rows.add(tuple(row.tolist()))
    # disjoint up to duplicate images in the source data: nearly every row is distinct
    assert len(rows) >= len({tuple(r.tolist()) for r in x_all}) - 5


def test_split_indices_are_disjoint_stratified_and_deterministic():
    labels = torch.arange(100) % 4
    a = digits.split_indices(labels, (0.5, 0.25, 0.25), seed=3)
    b = digits.split_indices(labels, (0.5, 0.25, 0.25), seed=3)
    c = digits.split_indices(labels, (0.5, 0.25, 0.25), seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))
    joined = torch.cat(a)
    assert sorted(joined.tolist()) == list(range(100))
    # cuts at round(25 * [0.5, 0.75]) = [12, 19] in every class (round half to even)
    counts = [torch.bincount(labels[p], minlength=4).tolist() for p in a]
    assert counts == [[12] * 4, [7] * 4, [6] * 4]


def test_splits_depend_on_the_seed(data):
    other = digits.load_splits("digits", seed=1)
    assert other.sizes() == data.sizes()
    assert not torch.equal(other.y_test, data.y_test)
    # the exact seeded draw (torch.randperm with a seeded Generator)
    assert data.y_test[:12].tolist() == [5, 5, 8, 3, 1, 2, 0, 6, 4, 1, 9, 3]
    first_of_each = digits.few_labels(data.y_transfer, 1, seed=0).tolist()
    assert first_of_each == [51, 105, 187, 245, 259, 404, 454, 457, 497, 515]
    assert torch.equal(digits.load_splits("digits", seed=0).x_val, data.x_val)


@pytest.mark.parametrize(
    ("fractions", "error", "match"),
    [
        ((0.6, 0.3, 0.2, 0.1), ValueError, "sum to at most 1"),
        ((0.5, 0.0, 0.2, 0.1), ValueError, r"fractions\[1\]"),
        ((0.5, "a", 0.2, 0.1), TypeError, r"fractions\[1\]"),
        ((0.5, 0.5), ValueError, "4 entries"),
    ],
)
def test_make_splits_rejects_bad_fractions(fractions, error, match):
    x, y = toy(40)
    with pytest.raises(error, match=match):
        digits.make_splits(x, y, (2, 2), fractions)


def test_make_splits_checks_shapes_and_types():
    x, y = toy(40)
    with pytest.raises(ValueError, match="image_shape"):
        digits.make_splits(x, y, (3, 3))
    with pytest.raises(ValueError, match="labels must have 40 entries"):
        digits.make_splits(x, y[:-1], (2, 2))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        digits.make_splits(x, y.float(), (2, 2))
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        digits.make_splits(x.long(), y, (2, 2))


def test_few_labels_picks_exactly_per_class_and_is_seeded(data):
    idx = digits.few_labels(data.y_transfer, 3, seed=0)
    assert idx.shape == (30,)
    assert torch.bincount(data.y_transfer[idx]).tolist() == [3] * 10
    assert torch.equal(idx, digits.few_labels(data.y_transfer, 3, seed=0))
    assert not torch.equal(idx, digits.few_labels(data.y_transfer, 3, seed=1))
    with pytest.raises(ValueError, match="per_class"):
        digits.few_labels(data.y_transfer, 0)
    with pytest.raises(ValueError, match="has only"):
        digits.few_labels(data.y_transfer, 1000)


def test_without_class_drops_exactly_that_class(data):
    x, y = digits.without_class(data.x_transfer, data.y_transfer, 3)
    assert 3 not in y.tolist()
    assert len(y) == len(data.y_transfer) - int((data.y_transfer == 3).sum())
    assert x.shape == (len(y), 64)
    with pytest.raises(ValueError, match="nothing would be left"):
        digits.without_class(x[:2], torch.tensor([1, 1]), 1)


# --------------------------------------------------------------------------- models


def test_teacher_is_much_larger_than_student():
    teacher = digits.make_image_teacher(64, seed=0)
    student = digits.make_image_student(64, seed=0)
    assert digits.count_parameters(teacher) == 64 * 256 + 256 + 256 * 256 + 256 + 2570
    assert digits.count_parameters(student) == 64 * 16 + 16 + 16 * 10 + 10 == 1210
    assert any(isinstance(m, torch.nn.Dropout) for m in teacher)
    assert student(torch.zeros(5, 64)).shape == (5, 10)


def test_seeded_models_are_identical_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = digits.make_image_student(64, seed=7)
    after = torch.rand(1)
    b = digits.make_image_student(64, seed=7)
    assert torch.equal(before, after), "make_mlp must not consume the global RNG"
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = digits.make_image_student(64, seed=8)
    assert not torch.equal(a[0].weight, c[0].weight)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(hidden=(16, 0)), ValueError, r"hidden\[1\]"),
        (dict(hidden="16"), TypeError, "hidden"),
        (dict(hidden=(8,), dropout=1.0), ValueError, "dropout"),
        (dict(hidden=(8,), n_classes=1), ValueError, "n_classes"),
        (dict(hidden=(8,), seed=-1), ValueError, "seed"),
    ],
)
def test_make_mlp_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        digits.make_mlp(64, **kwargs)


# --------------------------------------------------------------------------- training


def test_train_model_is_deterministic_and_learns():
    x, y = toy()
    runs = []
    for _ in range(2):
        model = digits.make_mlp(4, (8,), 3, seed=0)
        hist = digits.train_model(
            model, x, y, F.cross_entropy, digits.ImageTrainConfig(epochs=30, lr=0.05, seed=0)
        )
        runs.append((hist, model))
    (h1, m1), (h2, m2) = runs
    assert h1 == h2
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters(), strict=True))
    assert len(h1["loss"]) == 30 and h1["loss"][-1] < h1["loss"][0] / 4
    assert digits.image_accuracy(m1, x, y) == 1.0
    assert not m1.training, "train_model leaves the model in eval mode"


def test_train_model_minibatch_seed_changes_the_order_not_the_shape():
    x, y = toy()
    hists = []
    for seed in (0, 0, 1):
        model = digits.make_mlp(4, (8,), 3, dropout=0.3, seed=0)
        hists.append(
            digits.train_model(
                model,
                x,
                y,
                F.cross_entropy,
                digits.ImageTrainConfig(epochs=3, batch_size=16, seed=seed),
                val=(x, y),
            )
        )
    assert hists[0] == hists[1]
    assert hists[0]["loss"] != hists[2]["loss"]
    assert set(hists[0]) == {"loss", "val accuracy"} and len(hists[0]["val accuracy"]) == 3


def test_train_model_shares_the_loop_with_distillation_loss():
    x, y = toy()
    teacher = digits.make_mlp(4, (16,), 3, seed=1)
    digits.train_model(teacher, x, y, F.cross_entropy, digits.ImageTrainConfig(epochs=40, lr=0.05))
    soft = digits.image_teacher_logits(teacher, x)
    student = digits.make_mlp(4, (4,), 3, seed=2)

    def loss(s, t, labels):
        return distillation_loss(s, t, labels, alpha=0.5, temperature=2.0)

    hist = digits.train_model(
        student, x, (soft, y), loss, digits.ImageTrainConfig(epochs=40, lr=0.05)
    )
    assert hist["loss"][-1] < hist["loss"][0]
    assert digits.image_accuracy(student, x, y) >= 0.95


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(epochs=0), ValueError, "epochs"),
        (dict(epochs=2, lr=0.0), ValueError, "lr"),
        (dict(epochs=2, batch_size=0), ValueError, "batch_size"),
        (dict(epochs=2, weight_decay=-1.0), ValueError, "weight_decay"),
        (dict(epochs=1.5), TypeError, "epochs"),
    ],
)
def test_train_model_rejects_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        digits.ImageTrainConfig(**kwargs)


def test_train_model_names_a_missing_config():
    x, y = toy()
    with pytest.raises(TypeError, match="ImageTrainConfig"):
        digits.train_model(digits.make_mlp(4, (4,), 3), x, y, F.cross_entropy, {"epochs": 2})
    with pytest.raises(TypeError, match="ImageTrainConfig"):
        digits.train_image_student(x, y, F.cross_entropy, 3)


def test_train_model_checks_targets_and_loss():
    x, y = toy()
    model = digits.make_mlp(4, (4,), 3)
    one_epoch = digits.ImageTrainConfig(epochs=1)
    with pytest.raises(ValueError, match=r"targets\[0\] must have 60 rows"):
        digits.train_model(model, x, y[:10], F.cross_entropy, one_epoch)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        digits.train_model(model, x, y, "cross_entropy", one_epoch)
    with pytest.raises(ValueError, match="scalar"):
        digits.train_model(
            model, x, y, lambda s, t: F.cross_entropy(s, t, reduction="none"), one_epoch
        )
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor"):
        digits.train_model(model, x.numpy(), y, F.cross_entropy, one_epoch)


def test_teacher_logits_use_eval_mode_and_no_grad():
    model = digits.make_mlp(4, (64,), 3, dropout=0.5, seed=0)
    model.train()
    x, _ = toy()
    a = digits.image_teacher_logits(model, x)
    b = digits.image_teacher_logits(model, x)
    assert torch.equal(a, b), "dropout must be off"
    assert not a.requires_grad
    assert model.training, "the model's mode is restored"
    with torch.no_grad():
        model.eval()
        assert torch.allclose(a, model(x))


def test_per_class_accuracy_and_summarize():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    acc = digits.per_class_accuracy(logits, labels)
    assert acc[:2].tolist() == pytest.approx([1.0, 2 / 3]) and math.isnan(float(acc[2]))
    assert digits.summarize([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert digits.summarize([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        digits.summarize([])


def test_class_similarity_rows_are_mean_soft_targets():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    sim = digits.class_similarity(logits, labels, temperature=1.0)
    expected0 = (torch.softmax(logits[0], 0) + torch.softmax(logits[1], 0)) / 2
    assert torch.allclose(sim[0], expected0)
    assert torch.allclose(sim.sum(dim=1), torch.ones(2))


# --------------------------------------------------------------------------- held-out bias


def test_choose_class_bias_takes_no_test_data():
    params = list(inspect.signature(digits.choose_class_bias).parameters)
    assert params == ["val_logits", "cls", "val_labels", "prior"]
    assert not any("test" in p for p in params)


def test_choose_class_bias_prior_hits_the_requested_fraction():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=gen)
    logits[:, 2] -= 4.0  # class 2 is almost never predicted
    assert int((logits.argmax(1) == 2).sum()) == 0
    for prior in (0.0, 0.1, 0.2, 0.35):
        bias = digits.choose_class_bias(logits, 2, prior=prior)
        predicted = digits.shift_class_logit(logits, 2, bias).argmax(1) == 2
        assert int(predicted.sum()) == round(prior * 200)


def test_choose_class_bias_by_accuracy_recovers_the_shift():
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(300) % 3
    logits = torch.randn(300, 3, generator=gen)
    logits[torch.arange(300), labels] += 3.0
    logits[:, 1] -= 5.0  # a too-low bias for class 1, as for a class never seen in training
    before = float((logits.argmax(1) == labels).float().mean())
    bias = digits.choose_class_bias(logits, 1, val_labels=labels)
    after = float((digits.shift_class_logit(logits, 1, bias).argmax(1) == labels).float().mean())
    assert before < 0.7 and after > 0.95
    assert 3.0 < bias < 7.0
    # it is the best bias: no bias on a fine grid does better on this data
    grid = torch.linspace(-10, 10, 401)
    best = max(
        float((digits.shift_class_logit(logits, 1, float(b)).argmax(1) == labels).float().mean())
        for b in grid
    )
    assert after >= best


def test_choose_class_bias_rejects_bad_input():
    logits = torch.randn(10, 3)
    with pytest.raises(ValueError, match="exactly one"):
        digits.choose_class_bias(logits, 1)
    with pytest.raises(ValueError, match="exactly one"):
        digits.choose_class_bias(logits, 1, prior=0.1, val_labels=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="prior"):
        digits.choose_class_bias(logits, 1, prior=1.5)
    with pytest.raises(ValueError, match="cls"):
        digits.choose_class_bias(logits, 3, prior=0.1)
    with pytest.raises(ValueError, match="val_labels must have 10 entries"):
        digits.choose_class_bias(logits, 1, val_labels=torch.zeros(9, dtype=torch.long))
    with pytest.raises(TypeError, match="val_logits"):
        digits.choose_class_bias(logits.tolist(), 1, prior=0.1)


def test_shift_class_logit_copies_and_shifts_one_column():
    logits = torch.zeros(2, 3)
    out = digits.shift_class_logit(logits, 2, 1.5)
    assert out[:, 2].tolist() == [1.5, 1.5] and out[:, :2].abs().sum() == 0
    assert logits.abs().sum() == 0, "the input is not modified"
    with pytest.raises(ValueError, match="bias"):
        digits.shift_class_logit(logits, 0, float("nan"))


# --------------------------------------------------------------------------- end to end (tiny)


def test_tiny_end_to_end_is_exactly_reproducible(data):
    """A small seeded teacher/student run: the same numbers every time, and distillation works."""
    results = []
    for _ in range(2):
        teacher = digits.make_image_teacher(64, hidden=(64,), seed=0)
        digits.train_model(
            teacher,
            data.x_train,
            data.y_train,
            F.cross_entropy,
            digits.ImageTrainConfig(epochs=20, lr=3e-3, batch_size=128, seed=0),
        )
        soft = digits.image_teacher_logits(teacher, data.x_transfer)
        student = digits.make_image_student(64, seed=0)
        digits.train_model(
            student,
            data.x_transfer,
            soft,
            lambda s, t: distillation_loss(s, t, None, alpha=0.0, temperature=4.0),
            digits.ImageTrainConfig(epochs=60, lr=1e-2, seed=0),
        )
        results.append(
            (
                digits.image_accuracy(teacher, data.x_test, data.y_test),
                digits.image_accuracy(student, data.x_test, data.y_test),
            )
        )
    assert results[0] == results[1]
    teacher_acc, student_acc = results[0]
    assert teacher_acc > 0.9 and student_acc > 0.8


def test_train_image_student_matches_a_hand_written_full_batch_adam_loop() -> None:
    """An independent reference: plain torch, seeded init, full-batch Adam for `epochs` steps.

    Catches a wrong wrapper (other sizes, lr, epochs or seed) and a wrong shared step (gradients not
    zeroed, a clip or a schedule that should not be there, a skipped optimiser step).
    """
    import torch.nn.functional as F
    from torch import nn

    data = digits.load_splits("digits", seed=0)
    x, y = data.x_train, data.y_train
    student = digits.train_image_student(
        x, y, F.cross_entropy, digits.ImageTrainConfig(epochs=5, seed=3)
    )
    torch.manual_seed(3)  # make_mlp's seeded init: Linear(64, 16), ReLU, Linear(16, 10)
    ref = nn.Sequential(nn.Linear(data.n_features, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
    assert [p.shape for p in student.parameters()] == [p.shape for p in ref.parameters()]
    for got, want in zip(student.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert not student.training
