"""Chapter 08's second pass: mean pooling, standardised hint targets, TinyBERT's combined objective and
two stages, gradient norms per loss term, and choosing on validation; against independent references."""

import pytest
import torch

from kdhelpers.batching import TextExamples
from kdhelpers.chapters.features import (
    FeatureSetup,
    FeatureStudent,
    FeatureVariant,
    make_feature_kd_loss,
    standardise_hidden,
    teacher_features,
    train_feature_variant,
    uniform_layer_map,
)
from kdhelpers.losses import attention_transfer_loss, hidden_mse_loss
from kdhelpers.models import tiny_bert_student
from kdhelpers.students import StudentConfig, best_on_validation
from kdhelpers.teacher import TextSplit, split_accuracy

IDS = [[1, 5, 7, 9, 2], [1, 4, 2], [1, 8, 8, 3, 6, 2], [1, 9, 4, 4, 2], [1, 3, 2], [1, 6, 7, 2]]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return tiny_bert_student(50, hidden=12, layers=4, heads=3, intermediate=16, max_positions=16)


def small_student(seed=0):
    torch.manual_seed(seed)
    return tiny_bert_student(50, hidden=8, layers=2, heads=2, intermediate=16, max_positions=16)


def padded(rows):
    """input_ids, attention_mask of IDS[rows], right-padded with 0."""
    n = max(len(IDS[r]) for r in rows)
    ids = torch.tensor([IDS[r] + [0] * (n - len(IDS[r])) for r in rows])
    return ids, (ids != 0).long()


def test_standardise_hidden_gives_zero_mean_unit_std_per_dimension(teacher):
    feats = teacher_features(
        teacher, IDS, hidden_layers=(2, 4), attention_layers=(4,), device="cpu"
    )
    std = standardise_hidden(feats)
    tokens = torch.cat(std.hidden, dim=1)  # (layers, all tokens, width)
    torch.testing.assert_close(tokens.mean(1), torch.zeros(2, 12), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.std(1), torch.ones(2, 12), atol=1e-4, rtol=0)
    # an independent reference for one value: layer 4, example 2, token 1, dimension 3
    raw = torch.cat([h[1] for h in feats.hidden])
    expect = (feats.hidden[2][1, 1, 3] - raw[:, 3].mean()) / raw[:, 3].std()
    assert float(std.hidden[2][1, 1, 3]) == pytest.approx(float(expect), rel=1e-4)
    assert std.attentions is feats.attentions and std.lengths == feats.lengths
    only_attn = teacher_features(teacher, IDS[:2], attention_layers=(4,), device="cpu")
    with pytest.raises(ValueError, match="no hidden layer"):
        standardise_hidden(only_attn)


def test_mean_pooling_reads_the_mean_of_real_tokens_and_ignores_padding():
    model = small_student()
    student = FeatureStudent(model, "logits", pooling="mean").eval()
    ids, mask = padded([0, 1])
    with torch.no_grad():
        got = student(input_ids=ids, attention_mask=mask)
        last = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        for b in range(2):
            n = int(mask[b].sum())
            expect = model.classifier(last[b, :n].mean(0))
            torch.testing.assert_close(got[b], expect, atol=1e-5, rtol=1e-5)
        alone = student(input_ids=torch.tensor([IDS[1]]), attention_mask=None)
    torch.testing.assert_close(alone[0], got[1], atol=1e-5, rtol=1e-5)  # padding changes nothing
    cls = FeatureStudent(small_student(), "logits", pooling="cls").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            cls(input_ids=ids, attention_mask=mask),
            small_student().eval()(input_ids=ids, attention_mask=mask).logits,
        )
    with pytest.raises(ValueError, match="pooling must be one of"):
        FeatureStudent(small_student(), "logits", pooling="max")


def batch_of(rows):
    ids, mask = padded(rows)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "index": torch.tensor(rows),
        "labels": torch.tensor([0] + [-1] * (len(rows) - 1)),
        "teacher_logits": torch.randn(len(rows), 2, generator=torch.Generator().manual_seed(1)),
    }


def test_mse_plus_attention_is_the_sum_of_both_terms_averaged_over_pairs(teacher):
    feats = teacher_features(
        teacher, IDS, hidden_layers=(2, 4), attention_layers=(2, 4), device="cpu"
    )
    layer_map = uniform_layer_map(2, 4)
    student = FeatureStudent(
        small_student(), "mse+attention", layer_map, teacher_width=12, teacher_layers=4,
        pooling="mean",
    )  # fmt: skip
    loss_fn = make_feature_kd_loss(student, feats, beta=0.3, alpha=0.0, temperature=2.0)
    batch = batch_of([0, 2])
    student.train()
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss = loss_fn(logits, batch)
    target = feats.for_batch(batch["index"], batch["attention_mask"])
    terms = [
        hidden_mse_loss(
            student.features["hidden"][s], target["hidden"][t], student.projections[j],
            batch["attention_mask"],
        )
        + attention_transfer_loss(
            student.features["attentions"][s - 1], target["attentions"][t], batch["attention_mask"]
        )
        for j, (s, t) in enumerate(layer_map)
    ]  # fmt: skip
    kd, feat = loss_fn.log[-1]
    assert feat == pytest.approx(float(sum(terms).detach() / 2), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(kd + 0.3 * feat, rel=1e-5)
    only = make_feature_kd_loss(student, feats, beta=0.3, logit_weight=0.0)
    assert float(only(logits, batch).detach()) == pytest.approx(0.3 * feat, rel=1e-5)


def test_gradient_norms_per_term_match_autograd(teacher):
    feats = standardise_hidden(teacher_features(teacher, IDS, hidden_layers=(4,), device="cpu"))
    student = FeatureStudent(
        small_student(), "mse", [(2, 4)], teacher_width=12, teacher_layers=4, pooling="mean"
    )
    loss_fn = make_feature_kd_loss(student, feats, beta=2.0, alpha=0.0, grad_every=2)
    batch = batch_of([0, 1, 3])
    student.train()
    for _ in range(3):  # steps 0, 1, 2: logged at 0 and 2 (no optimiser step: same weights)
        torch.manual_seed(5)  # the same dropout masks in every forward
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss_fn(logits, batch)
    assert [g["step"] for g in loss_fn.grad_log] == [0, 2]
    params = [p for p in student.parameters() if p.requires_grad]
    # independent reference: re-run the last forward and differentiate each weighted term alone
    torch.manual_seed(5)
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    plain = make_feature_kd_loss(student, feats, beta=2.0, alpha=0.0, logit_weight=0.0)
    feat_term = plain(logits, batch)
    logit_only = make_feature_kd_loss(student, feats, beta=0.0, alpha=0.0)
    logit_term = logit_only(logits, batch)

    def norm(term):
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        return torch.cat([g.flatten() for g in grads if g is not None])

    g_feat, g_logit = norm(feat_term), norm(logit_term)
    last = loss_fn.grad_log[-1]
    assert last["feature_grad_norm"] == pytest.approx(float(g_feat.norm()), rel=1e-4)
    assert last["logit_grad_norm"] == pytest.approx(float(g_logit.norm()), rel=1e-4)
    both = norm(feat_term + logit_term)
    assert last["total_grad_norm"] == pytest.approx(float(both.norm()), rel=1e-4)
    cos = float(g_feat @ g_logit / (g_feat.norm() * g_logit.norm()))
    assert last["cosine"] == pytest.approx(cos, abs=1e-4)
    with pytest.raises(ValueError, match="grad_every"):
        make_feature_kd_loss(student, feats, grad_every=0)


def test_feature_variant_checks_and_best_on_validation():
    assert not FeatureVariant(name="KD").two_stage
    v = FeatureVariant(name="hint", kind="mse", beta=0.1)
    assert v.with_beta(1.0).beta == 1.0 and v.beta == 0.1
    with pytest.raises(ValueError, match="stage1_epochs needs a feature kind"):
        FeatureVariant(name="x", stage1_epochs=2)
    with pytest.raises(ValueError, match="kind must be one of"):
        FeatureVariant(name="x", kind="hint")
    with pytest.raises(ValueError, match="pooling"):
        FeatureVariant(name="x", pooling="max")
    with pytest.raises(ValueError, match="name"):
        FeatureVariant(name="")
    hist = {
        0.1: {"best_val_accuracy": 0.7},
        1.0: {"best_val_accuracy": 0.8},
        0.3: {"best_val_accuracy": 0.8},
    }
    assert best_on_validation(hist) == 1.0  # the first of the tied best
    with pytest.raises(ValueError, match="no best_val_accuracy"):
        best_on_validation({0.1: {"best_val_accuracy": None}})
    with pytest.raises(ValueError, match="empty"):
        best_on_validation({})


def test_train_feature_variant_one_and_two_stages(teacher):
    feats = teacher_features(
        teacher, IDS, hidden_layers=(2, 4), attention_layers=(2, 4), device="cpu"
    )
    gold = torch.tensor([0, 1, 0, 1, 0, 1])
    logits = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    data = TextExamples(IDS, gold, logits)
    val = TextSplit([f"v{i}" for i in range(4)], ["t"] * 4, IDS[:4], gold[:4])
    setup = FeatureSetup(
        50, standardise_hidden(feats), 4, tuple(uniform_layer_map(2, 4)), data, val,
        alpha=0.0, temperature=2.0, grad_every=1,
    )  # fmt: skip
    config = StudentConfig(epochs=2, lr=1e-3, batch_size=3, patience=None)
    with pytest.MonkeyPatch.context() as mp:  # the student of the run: the small one of this test
        import kdhelpers.chapters.features as features

        mp.setattr(features, "make_student", lambda kind, vocab, seed=0: small_student(seed))
        one = train_feature_variant(
            setup, FeatureVariant(name="hint", kind="mse", beta=0.5), config, "cpu", seed=1
        )
        two = train_feature_variant(
            setup,
            FeatureVariant(name="TinyBERT", kind="mse+attention", stage1_epochs=2),
            config,
            "cpu",
            seed=1,
        )
    assert one.stage1_history is None and one.student.kind == "mse"
    assert len(one.loss_log) == 4 and len(one.grad_log) == 4  # 2 batches x 2 epochs, every step
    assert two.student.kind == "logits" and two.student.pooling == "mean"
    assert two.stage1_history["best_epoch"] == 2 and two.stage1_history["best_val_accuracy"] is None
    assert all(g["logit_grad_norm"] == 0.0 for g in two.grad_log)  # stage 1: the features alone
    assert len(two.history["val_accuracy"]) == 2
    with pytest.raises(ValueError, match="hold 6 examples but data 4"):
        FeatureSetup(
            50, feats, 4, ((1, 2),), TextExamples(IDS[:4], gold[:4], logits[:4]), val, 0.0, 2.0
        )
    with pytest.raises(TypeError, match="teacher_logits"):
        FeatureSetup(50, feats, 4, ((1, 2),), TextExamples(IDS, gold), val, 0.0, 2.0)


def test_initial_gradient_norms_take_no_step_and_scale_with_beta(teacher):
    feats = teacher_features(teacher, IDS, hidden_layers=(4,), device="cpu")
    gold = torch.tensor([0, 1, 0, 1, 0, 1])
    data = TextExamples(IDS, gold, torch.randn(6, 2, generator=torch.Generator().manual_seed(0)))
    val = TextSplit([f"v{i}" for i in range(2)], ["t"] * 2, IDS[:2], gold[:2])
    setup = FeatureSetup(50, feats, 4, ((2, 4),), data, val, alpha=0.0, temperature=2.0)
    with pytest.MonkeyPatch.context() as mp:
        import kdhelpers.chapters.features as features

        mp.setattr(features, "make_student", lambda kind, vocab, seed=0: small_student(seed))
        small = features.initial_gradient_norms(
            setup, FeatureVariant(name="h", kind="mse", beta=0.1), "cpu", batches=2, batch_size=3
        )
        large = features.initial_gradient_norms(
            setup, FeatureVariant(name="h", kind="mse", beta=1.0), "cpu", batches=2, batch_size=3
        )
        with pytest.raises(ValueError, match="one-stage"):
            features.initial_gradient_norms(
                setup, FeatureVariant(name="t", kind="mse", stage1_epochs=1), "cpu"
            )
    assert [g["step"] for g in small] == [0, 1]
    for a, b in zip(small, large, strict=True):  # same weights, batches and dropout: 10x beta
        assert b["feature_grad_norm"] == pytest.approx(10 * a["feature_grad_norm"], rel=1e-4)
        assert b["logit_grad_norm"] == pytest.approx(a["logit_grad_norm"], rel=1e-4)


def test_widen_grid_looks_past_the_edge_within_the_range():
    from kdhelpers.students import widen_grid

    assert widen_grid([0.1, 1.0, 10.0], 10.0, 0.01, 100.0) == pytest.approx(100.0)
    assert widen_grid([0.1, 1.0, 10.0, 100.0], 100.0, 0.01, 100.0) is None  # the range's end
    assert widen_grid([0.1, 1.0, 10.0], 0.1, 0.01, 100.0) == pytest.approx(0.01)
    assert widen_grid([0.1, 1.0, 10.0], 1.0, 0.01, 100.0) is None  # inside: bracketed
    assert widen_grid([1.0], 1.0, 0.01, 100.0) == pytest.approx(10.0)  # one value: look up first
    with pytest.raises(ValueError, match="must be one of the values tried"):
        widen_grid([0.1, 1.0], 3.0, 0.01, 100.0)


def test_gradient_share_and_clip_factor_per_logged_step():
    from kdhelpers.chapters.features import gradient_share

    log = [
        {"logit_grad_norm": 3.0, "feature_grad_norm": 1.0, "total_grad_norm": 4.0},
        {"logit_grad_norm": 0.5, "feature_grad_norm": 0.0, "total_grad_norm": 0.5},
        {"logit_grad_norm": 0.0, "feature_grad_norm": 0.0, "total_grad_norm": 0.0},
    ]
    got = gradient_share(log, max_norm=1.0)
    assert got == {"feature_share": [0.25, 0.0, 0.0], "clip_factor": [0.25, 1.0, 1.0]}
    assert gradient_share(log[:1], max_norm=8.0)["clip_factor"] == [1.0]
    with pytest.raises(ValueError, match="empty"):
        gradient_share([], 1.0)
    with pytest.raises(ValueError, match="total_grad_norm"):
        gradient_share([{"logit_grad_norm": 1.0, "feature_grad_norm": 1.0}], 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        gradient_share(log, 0.0)


def test_score_variant_row_matches_its_run(teacher):
    from kdhelpers.chapters import features

    feats = teacher_features(teacher, IDS, hidden_layers=(4,), device="cpu")
    gold = torch.tensor([0, 1, 0, 1, 0, 1])
    data = TextExamples(IDS, gold, torch.randn(6, 2, generator=torch.Generator().manual_seed(0)))
    val = TextSplit([f"v{i}" for i in range(4)], ["t"] * 4, IDS[:4], gold[:4])
    test = TextSplit([f"t{i}" for i in range(6)], ["t"] * 6, IDS, gold)
    setup = FeatureSetup(50, feats, 4, ((2, 4),), data, val, alpha=0.0, temperature=2.0)
    config = StudentConfig(epochs=2, lr=1e-3, batch_size=3, patience=None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(features, "make_student", lambda kind, vocab, seed=0: small_student(seed))
        run, row = features.score_variant(
            setup, FeatureVariant(name="hint", kind="mse", beta=0.5), config, "cpu", 1, test
        )
        _, plain = features.score_variant(
            setup, FeatureVariant(name="plain"), config, "cpu", 1, test
        )
    assert row["student"] == "hint" and row["beta"] == 0.5 and row["seed"] == 1
    assert row["best_epoch"] == run.history["best_epoch"] and row["epoch_limit"] == 2
    assert row["val_accuracy"] == run.history["best_val_accuracy"]
    assert row["test_accuracy"] == split_accuracy(run.student, test, "cpu") and row["minutes"] > 0
    assert plain["beta"] is None, "a student without a hint term has no beta"
