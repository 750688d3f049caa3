"""Second reliability pass: numerics at the edges of T and logits, inputs that used to be silently converted,
training arguments that used to corrupt a run, and errors that name the argument (docs/reliability.md)."""

import math

import mpmath
import pytest
import torch
from torch import nn

from kdhelpers.batching import TextExamples, make_loader, tokenize_texts
from kdhelpers.chapters import digits, lm
from kdhelpers.losses import (
    attention_transfer_loss,
    distillation_loss,
    hidden_mse_loss,
    kd_kl,
    soft_targets,
)
from kdhelpers.metrics import (
    accuracy,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from kdhelpers.models import BagOfEmbeddingsStudent, CNNStudent, tiny_bert_student
from kdhelpers.students import make_student
from kdhelpers.train import (
    TrainConfig,
    cross_entropy_loss,
    evaluate,
    fit,
    make_kd_loss,
    warmup_linear_schedule,
)
from kdhelpers.validate import check_seed

mpmath.mp.dps = 150


def mp_kd(s, t, temp):
    """T^2 * KL(teacher_T || student_T), averaged over rows, with 150 significant digits (mpmath)."""
    temp = mpmath.mpf(temp)
    total = mpmath.mpf(0)
    for srow, trow in zip(s.double().tolist(), t.double().tolist(), strict=True):
        xs = [mpmath.mpf(v) / temp for v in srow]
        xt = [mpmath.mpf(v) / temp for v in trow]
        ls = [
            x - mpmath.log(mpmath.fsum(mpmath.exp(v - max(xs)) for v in xs)) - max(xs) for x in xs
        ]
        lt = [
            x - mpmath.log(mpmath.fsum(mpmath.exp(v - max(xt)) for v in xt)) - max(xt) for x in xt
        ]
        total += mpmath.fsum(mpmath.exp(b) * (b - a) for a, b in zip(ls, lt, strict=True))
    return float(total / len(s.tolist()) * temp * temp)


def batch(seed=0, n=6, c=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale, torch.randn(n, c, generator=g) * scale


# ---------------------------------------------------------------- numerics at the edges


@pytest.mark.parametrize("temp", [1e-40, 1e-6, 0.05, 1.0, 4.0, 64.0, 100.0, 1e4, 1e6, 1e12, 1e30])
@pytest.mark.parametrize("seed,scale", [(0, 3.0), (1, 0.01), (2, 30.0)])
def test_kd_kl_matches_high_precision_reference_at_every_temperature(temp, seed, scale):
    s, t = batch(seed, scale=scale)
    got = float(kd_kl(s, t, temp))
    want = mp_kd(s, t, temp)
    assert math.isfinite(got)
    # float32 results: ~1e-4 relative at worst up to T = 64 (the course's range), float64 inside beyond it
    assert got == pytest.approx(want, rel=1e-4 if temp <= 64 else 1e-5, abs=1e-44)


def test_kd_kl_at_huge_temperature_tends_to_half_the_variance_of_the_logit_gap():
    s, t = batch(3)
    d = (t - s).double()
    limit = float(((d - d.mean(-1, keepdim=True)) ** 2).mean(-1).mean() / 2)
    for temp in (1e8, 1e15, 1e50):
        assert float(kd_kl(s, t, temp)) == pytest.approx(limit, rel=1e-6)


@pytest.mark.parametrize("temp", [0.5, 2.0])
def test_kd_kl_with_logits_near_the_float32_limit_is_finite_and_right(temp):
    s = torch.tensor([[3e38, -3e38, 0.0], [1.0, 2.0, 3.0]])
    t = torch.tensor([[0.0, 1.0, 2.0], [3e38, 0.0, 0.0]])
    want = mp_kd(s, t, temp)
    if want > 3.4e38:
        with pytest.raises(ValueError, match="overflows float32"):
            kd_kl(s, t, temp)
    else:
        assert float(kd_kl(s, t, temp)) == pytest.approx(want, rel=1e-6)


def test_kd_gradient_at_huge_temperature_matches_float64_formula():
    s, t = batch(4)
    s = s.requires_grad_(True)
    kd_kl(s, t, 1e6).backward()
    temp = 1e6
    ps = torch.softmax(s.detach().double() / temp, -1)
    pt = torch.softmax(t.double() / temp, -1)
    want = temp * (ps - pt) / s.shape[0]  # d(T^2 KL)/ds
    torch.testing.assert_close(s.grad.double(), want, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("temp", [1e-40, 1e-3])
def test_soft_targets_at_tiny_temperature_are_one_hot_not_nan(temp):
    logits = torch.tensor([[1.0, 3.0, 2.0], [3e38, -3e38, 0.0]])
    p = soft_targets(logits, temp)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("temp", [1e-101, 1e101, float("inf"), float("nan"), 0.0, -2.0])
def test_temperature_outside_the_documented_range_is_refused(temp):
    s, t = batch()
    with pytest.raises(ValueError, match="temperature"):
        kd_kl(s, t, temp)
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(s, temp)


@pytest.mark.parametrize("temp", [1e-40, 1.0, 1e4, 1e6])
def test_lm_loss_kd_matches_reference_at_edge_temperatures(temp):
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    ids = torch.tensor([[1, 4, 5, 6, 2], [1, 4, 2, 0, 0]])
    mask = (ids != 0).long()
    got = float(lm.lm_loss(s, ids, mask, t, alpha=0.0, temperature=temp))
    keep = mask[:, 1:].bool()
    want = mp_kd(s[:, :-1][keep], t[:, :-1][keep], temp)
    assert math.isfinite(got) and got == pytest.approx(want, rel=1e-5, abs=1e-44)


# ---------------------------------------------------------------- silently converted inputs


@pytest.mark.parametrize(
    "labels", [[0.7, 0.2, 1.9], [0.0, 1.0, 1.0], torch.tensor([0.7, 0.2, 1.9]), [True, False, True]]
)
def test_text_examples_refuse_non_integer_labels(labels):
    with pytest.raises(TypeError, match="labels"):
        TextExamples([[1], [2], [3]], labels)


@pytest.mark.parametrize("labels", [[0, -2, 1], torch.tensor([0, 1, -5])])
def test_text_examples_refuse_labels_below_minus_one(labels):
    with pytest.raises(ValueError, match="labels"):
        TextExamples([[1], [2], [3]], labels)


@pytest.mark.parametrize("ids", [[[1, None]], [[1, 2.5]], [[1, -1]], ["abc"]])
def test_text_examples_refuse_bad_token_ids(ids):
    with pytest.raises((TypeError, ValueError), match="input_ids"):
        TextExamples(ids, [0])


def test_text_examples_keep_integer_labels_of_any_int_type():
    ex = TextExamples([[1], [2], [3]], torch.tensor([0, -1, 1], dtype=torch.int8))
    assert ex.labels.dtype == torch.long and ex.labels.tolist() == [0, -1, 1]


@pytest.mark.parametrize(
    "seed,exc",
    [
        (1.5, TypeError),
        (True, TypeError),
        ("1", TypeError),
        (-1, ValueError),
        (2**63, ValueError),
        (2**64, ValueError),
    ],
)
def test_seeds_are_ints_in_range_everywhere(seed, exc):
    for build in (
        lambda: make_student("bag", 50, seed=seed),
        lambda: digits.make_image_student(4, seed=seed),
        lambda: lm.make_lm(8, n_layer=1, n_embd=8, n_head=2, seed=seed),
        lambda: make_loader(TextExamples([[1]], [0]), 1, shuffle=True, seed=seed),
    ):
        with pytest.raises(exc, match="seed"):
            build()


def test_largest_seed_is_accepted():
    assert check_seed("seed", 2**63 - 1) == 2**63 - 1
    make_student("bag", 50, seed=2**63 - 1)


def test_lm_cross_entropy_refuses_integer_logits():
    ids = torch.tensor([[1, 4, 5, 2]])
    with pytest.raises(TypeError, match="logits"):
        lm.lm_loss(torch.ones(1, 4, 6, dtype=torch.long), ids, torch.ones_like(ids))
    with pytest.raises(TypeError, match="logits"):
        lm.nll_sum(torch.ones(1, 4, 6, dtype=torch.int32), ids, torch.ones_like(ids))


def uniform_attention(b, h, n):
    return torch.full((b, h, n, n), 1.0 / n)


@pytest.mark.parametrize("kind", ["kl", "mse"])
@pytest.mark.parametrize("which", ["student", "teacher"])
@pytest.mark.parametrize("broken", ["zeros", "half", "row"])
def test_attention_maps_whose_rows_are_not_distributions_are_refused(kind, which, broken):
    good = uniform_attention(2, 2, 4)
    bad = good.clone()
    if broken == "zeros":
        bad.zero_()
    elif broken == "half":
        bad *= 0.5
    else:
        bad[1, 0, 2] = 0.0  # one all-zero query row
    s, t = (bad, good) if which == "student" else (good, bad)
    with pytest.raises(ValueError, match=f"{which}_attn.*sum to 1"):
        attention_transfer_loss(s, t, kind=kind)


def test_attention_rows_of_padded_queries_may_be_zero():
    a = uniform_attention(1, 2, 4)
    a[..., :3, :3] = 1 / 3
    a[..., 3, :] = 0.0  # padded query
    a[..., :, 3] = 0.0  # padded key
    mask = torch.tensor([[1, 1, 1, 0]])
    assert float(attention_transfer_loss(a, a, mask)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "mask", [torch.tensor([[0.5, 1.0, 1.0, 1.0]]), torch.tensor([[2, 1, 1, 1]])]
)
def test_masks_hold_zeros_and_ones_only(mask):
    a = uniform_attention(1, 2, 4)
    with pytest.raises(ValueError, match="mask"):
        attention_transfer_loss(a, a, mask)
    s = torch.randn(1, 4, 3)
    with pytest.raises(ValueError, match="mask"):
        distillation_loss(s, s, None, alpha=0.0, mask=mask)


# ---------------------------------------------------------------- training arguments


def tiny_classifier():
    torch.manual_seed(0)
    return BagOfEmbeddingsStudent(30, 2, embed_dim=8, hidden=8)


def tiny_loader(labels=(0, 1, 1, 0)):
    return make_loader(TextExamples([[1, 2, 3], [4, 5], [6, 7, 8], [9]], list(labels)), 2)


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(max_grad_norm=float("nan")), "max_grad_norm"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(max_grad_norm="1"), "max_grad_norm"),
        (dict(warmup_ratio=float("nan")), "warmup_ratio"),
        (dict(warmup_ratio=1.5), "warmup_ratio"),
        (dict(weight_decay=float("nan")), "weight_decay"),
        (dict(lr=float("inf")), "lr"),
        (dict(patience=-1), "patience"),
        (dict(epochs=1.0), "epochs"),
    ],
)
def test_fit_refuses_bad_settings_before_touching_the_model(kwargs, word):
    model = tiny_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises((ValueError, TypeError), match=word):
        fit(
            model,
            tiny_loader(),
            None,
            config=TrainConfig(**{"epochs": 1, "use_amp": False, **kwargs}),
            device="cpu",
        )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(max_grad_norm=float("nan")), "max_grad_norm"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
        (dict(warmup_ratio=float("nan")), "warmup_ratio"),
        (dict(alpha="0.5"), "alpha"),
        (dict(alpha=1.5), "alpha"),
        (dict(temperature="2"), "temperature"),
        (dict(seed=2**64), "seed"),
    ],
)
def test_train_lm_refuses_bad_settings(kwargs, word):
    model = lm.make_lm(8, n_layer=1, n_embd=8, n_head=2, n_positions=16)
    with pytest.raises((ValueError, TypeError), match=word):
        lm.train_lm(
            model,
            [[1, 4, 5, 2]] * 4,
            lm.LMTrainConfig(steps=1, batch_size=2, **kwargs),
            device="cpu",
        )


@pytest.mark.parametrize("ratio", [float("nan"), -0.1, 2.0])
def test_warmup_schedule_refuses_bad_ratio(ratio):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_linear_schedule(opt, 10, ratio)


def test_fit_clipping_still_descends():
    model = tiny_classifier()
    loader = tiny_loader()
    first = evaluate(model, loader, "cpu")["loss"]
    fit(
        model,
        loader,
        None,
        config=TrainConfig(epochs=5, lr=0.05, max_grad_norm=0.5, warmup_ratio=0.0, use_amp=False),
        device="cpu",
    )
    assert evaluate(model, loader, "cpu")["loss"] < first


@pytest.mark.parametrize(
    "make_logits",
    [
        lambda: torch.full((4, 2), float("nan")),
        lambda: torch.tensor([[0.0, float("inf")]] * 4),
    ],
)
@pytest.mark.parametrize(
    "metric", [accuracy, expected_calibration_error, reliability_bins, fit_temperature]
)
def test_metrics_refuse_nan_logits(make_logits, metric):
    with pytest.raises(ValueError, match="logits"):
        metric(make_logits(), torch.tensor([0, 1, 0, 1]))


@pytest.mark.parametrize(
    "labels,exc",
    [
        (torch.tensor([0, 5, 0, 1]), ValueError),
        (torch.tensor([0, -1, 0, 1]), ValueError),
        (torch.tensor([0.0, 1.0, 0.0, 1.0]), TypeError),
    ],
)
@pytest.mark.parametrize("metric", [accuracy, expected_calibration_error, fit_temperature])
def test_metrics_refuse_bad_labels(labels, exc, metric):
    with pytest.raises(exc, match="labels"):
        metric(torch.randn(4, 2), labels)


@pytest.mark.parametrize("grid", [[float("nan"), 1.0], [1.0, -1.0], ["2"], []])
def test_fit_temperature_refuses_bad_grid(grid):
    with pytest.raises((ValueError, TypeError), match="grid"):
        fit_temperature(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), grid)


def test_metrics_accept_int_labels_of_any_width():
    logits, y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1])
    for dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
        assert accuracy(logits, y.to(dtype)) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- errors that name the argument


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_narrow_integer_labels_work_in_every_loss(dtype):
    s, t = batch(c=3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    want = distillation_loss(s, t, y, alpha=0.5)
    assert float(distillation_loss(s, t, y.to(dtype), alpha=0.5)) == pytest.approx(float(want))
    b = {"labels": y.to(dtype), "teacher_logits": t}
    assert float(cross_entropy_loss(s, b)) == pytest.approx(
        float(cross_entropy_loss(s, {"labels": y}))
    )
    mixed = {"labels": torch.tensor([0, -1, 2, 0, -1, 2]).to(torch.int32), "teacher_logits": t}
    assert math.isfinite(float(make_kd_loss(0.5, 2.0)(s, mixed)))


@pytest.mark.parametrize("where", ["labels", "teacher_logits", "student_logits"])
def test_tensors_on_another_device_are_named(where):
    s, t = batch(c=3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    args = {"student_logits": s, "teacher_logits": t, "labels": y}
    args[where] = args[where].to("meta")
    with pytest.raises(ValueError, match=where):
        distillation_loss(args["student_logits"], args["teacher_logits"], args["labels"], alpha=0.5)


@pytest.mark.parametrize("labels", [[0, 5], [2, 0], [3, 1]])
def test_labels_out_of_range_in_the_training_loop_are_named(labels):
    loader = tiny_loader(labels + [0, 1])
    with pytest.raises(ValueError, match="labels.*num_labels"):
        fit(
            tiny_classifier(),
            loader,
            None,
            config=TrainConfig(epochs=1, use_amp=False),
            device="cpu",
        )
    with pytest.raises(ValueError, match="labels"):
        evaluate(tiny_classifier(), loader, "cpu")
    kd = make_kd_loss(0.5, 2.0)
    for batch_labels in ([labels[0], -1, labels[1]], [0, -2, 1]):
        with pytest.raises(ValueError, match="labels"):
            kd(
                torch.randn(3, 2),
                {"labels": torch.tensor(batch_labels), "teacher_logits": torch.randn(3, 2)},
            )
        with pytest.raises(ValueError, match="labels"):
            cross_entropy_loss(torch.randn(3, 2), {"labels": torch.tensor(batch_labels)})


@pytest.mark.parametrize("bad_id", [9, -1])
def test_lm_targets_outside_the_vocabulary_are_named(bad_id):
    ids = torch.tensor([[1, 4, bad_id, 2]])
    with pytest.raises(ValueError, match="input_ids"):
        lm.lm_loss(torch.randn(1, 4, 6), ids, torch.ones_like(ids))
    with pytest.raises(ValueError, match="input_ids"):
        lm.nll_sum(torch.randn(1, 4, 6), ids, torch.ones_like(ids))


@pytest.mark.parametrize("bad_id", [-1, 30, 1000])
@pytest.mark.parametrize(
    "build",
    [
        lambda: BagOfEmbeddingsStudent(30, 2, embed_dim=8, hidden=8),
        lambda: CNNStudent(30, 2, embed_dim=8, channels=4),
        lambda: tiny_bert_student(30, hidden=8, heads=2, intermediate=8, layers=1),
    ],
)
def test_token_ids_outside_a_students_vocabulary_are_named(bad_id, build):
    model = build().eval()
    with pytest.raises(ValueError, match="input_ids.*vocabulary of 30"):
        model(
            input_ids=torch.tensor([[1, bad_id, 3, 4]]),
            attention_mask=torch.ones(1, 4, dtype=torch.long),
        )
    if bad_id >= 0:  # (TextExamples already refuses negative ids)
        with pytest.raises(ValueError, match="input_ids"):
            evaluate(model, make_loader(TextExamples([[1, bad_id, 3, 4]], [0]), 1), "cpu")


@pytest.mark.parametrize("bad", [[[1, 50, 2]], [[1, 8, 2]]])
def test_lm_token_ids_from_a_larger_tokenizer_are_named(bad):
    model = lm.make_lm(8, n_layer=1, n_embd=8, n_head=2, n_positions=16)
    with pytest.raises(ValueError, match="vocabulary of 8"):
        lm.perplexity(model, bad, device="cpu")
    with pytest.raises(ValueError, match="train_seqs.*vocabulary"):
        lm.train_lm(model, bad, lm.LMTrainConfig(steps=1, batch_size=1), device="cpu")


def test_projection_of_the_wrong_width_is_named():
    with pytest.raises(ValueError, match="projection.*nn.Linear\\(4, 6\\)"):
        hidden_mse_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 6), nn.Linear(5, 6))
    with pytest.raises(ValueError, match="projection"):
        hidden_mse_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 6), nn.Sequential(nn.Linear(5, 6)))


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(heads=0), "heads"),
        (dict(hidden=0), "hidden"),
        (dict(layers=0), "layers"),
        (dict(heads=1.5), "heads"),
    ],
)
def test_tiny_bert_sizes_are_named(kwargs, word):
    with pytest.raises((ValueError, TypeError), match=word):
        tiny_bert_student(30, **kwargs)


def test_attention_maps_with_zero_heads_are_named():
    with pytest.raises(ValueError, match="student_attn"):
        attention_transfer_loss(torch.zeros(1, 0, 3, 3), uniform_attention(1, 2, 3))


@pytest.mark.parametrize("texts", [["ab", None], ["ab", 3], [None]])
def test_none_inside_texts_is_named(texts):
    class Tok:
        def __call__(self, texts, **kw):
            return {"input_ids": [[1] * len(x) for x in texts]}

    with pytest.raises(TypeError, match=r"texts\[\d\]"):
        tokenize_texts(texts, Tok())
    with pytest.raises(TypeError, match=r"texts\[\d\]"):
        lm.build_char_tokenizer(texts)


@pytest.mark.parametrize("alpha", ["0.5", None, True])
def test_string_alphas_from_configs_are_named(alpha):
    with pytest.raises(TypeError, match="alpha"):
        make_kd_loss(alpha, 2.0)
    ids = torch.tensor([[1, 4, 5, 2]])
    with pytest.raises(TypeError, match="alpha"):
        lm.lm_loss(
            torch.randn(1, 4, 6), ids, torch.ones_like(ids), torch.randn(1, 4, 6), alpha=alpha
        )


def test_digits_helpers_refuse_nan_losses_and_out_of_range_labels():
    with pytest.raises(FloatingPointError, match="loss_fn"):
        digits.train_model(
            nn.Linear(3, 2),
            torch.randn(4, 3),
            torch.tensor([0, 1, 0, 1]),
            lambda logits, y: logits.sum() * float("nan"),
            digits.ImageTrainConfig(epochs=1),
        )
    with pytest.raises(ValueError, match="labels"):
        digits.image_accuracy(nn.Linear(3, 2), torch.randn(2, 3), torch.tensor([0, 5]))
    assert digits.image_accuracy(
        nn.Linear(3, 2), torch.randn(2, 3), torch.tensor([0, 1], dtype=torch.int8)
    ) in (0, 0.5, 1)


# ---------------------------------------------------------------- checkpoints


def test_load_or_train_lm_retrains_a_fresh_model_after_an_incompatible_checkpoint(tmp_path):
    small = lm.make_lm(8, n_layer=1, n_embd=8, n_head=2, n_positions=16, seed=0)
    lm.load_or_train_lm(small, "x", lambda m: {"steps": 0}, tmp_path)
    other = lm.make_lm(8, n_layer=2, n_embd=8, n_head=2, n_positions=16, seed=5)
    fresh = {k: v.clone() for k, v in other.state_dict().items()}
    seen = {}

    def train(model):
        seen["fresh"] = all(torch.equal(fresh[k], v) for k, v in model.state_dict().items())
        return {"steps": 0}

    record = lm.load_or_train_lm(other, "x", train, tmp_path)
    assert record["trained_now"] and seen["fresh"]
    reloaded = lm.make_lm(8, n_layer=2, n_embd=8, n_head=2, n_positions=16, seed=9)
    assert not lm.load_or_train_lm(reloaded, "x", train, tmp_path)["trained_now"]
