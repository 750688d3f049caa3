"""Intermediate-layer losses and helpers against independent references (hand computations, PyTorch's own ops)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdhelpers.chapters.features import (
    FeatureStudent,
    TeacherFeatures,
    make_feature_kd_loss,
    set_attention_dropout,
    teacher_features,
    uniform_layer_map,
)
from kdhelpers.losses import attention_transfer_loss, hidden_cosine_loss, hidden_mse_loss
from kdhelpers.models import tiny_bert_student


@pytest.fixture
def states():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 4, generator=g)
    t = torch.randn(3, 5, 6, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    proj = nn.Linear(4, 6)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(6, 4, generator=g))
        proj.bias.copy_(torch.randn(6, generator=g))
    return s, t, mask, proj


def random_attention(batch, heads, seq, seed, mask=None):
    """Softmax rows over random scores; padded keys get probability 0 as in BERT."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, seq, seq, generator=g) * 2
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


# ---------------------------------------------------------------- hidden_mse_loss


def test_mse_hand_computed():
    s = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])  # (1, 2, 2)
    t = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])
    # squared errors: token 0 -> 1 + 4, token 1 -> 9 + 16; mean over 4 entries
    assert hidden_mse_loss(s, t).item() == pytest.approx(30 / 4)
    # only token 0: (1 + 4) / 2
    assert hidden_mse_loss(s, t, mask=torch.tensor([[1, 0]])).item() == pytest.approx(2.5)
    # a projection doubling the student: token 0 -> (2, 4): 4 + 16 = 20 over 2 entries
    double = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        double.weight.copy_(2 * torch.eye(2))
    assert hidden_mse_loss(s, t, double, mask=torch.tensor([[1, 0]])).item() == pytest.approx(10.0)


def test_mse_matches_pytorch_on_unmasked_tokens(states):
    s, t, mask, proj = states
    keep = mask.bool()
    want = F.mse_loss(proj(s)[keep], t[keep])
    got = hidden_mse_loss(s, t, proj, mask)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert hidden_mse_loss(proj(s).detach(), t).item() == pytest.approx(
        F.mse_loss(proj(s), t).item(), rel=1e-6
    )


def test_mse_mask_equals_sliced_tensors(states):
    s, t, mask, proj = states
    # one example of length 3: the masked loss is the loss on the first 3 tokens
    m = torch.tensor([[1, 1, 1, 0, 0]])
    assert hidden_mse_loss(s[1:2], t[1:2], proj, m).item() == pytest.approx(
        hidden_mse_loss(s[1:2, :3], t[1:2, :3], proj).item(), rel=1e-6
    )


def test_mse_gradient_reaches_projection_not_teacher(states):
    s, t, mask, proj = states
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    hidden_mse_loss(s, t, proj, mask).backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert s.grad.abs().sum() > 0
    assert t.grad is None  # the teacher is a fixed target
    # padded tokens get no gradient
    assert s.grad[2, 2:].abs().sum() == 0


def test_mse_float64_and_half_inputs_give_float32(states):
    s, t, mask, _ = states
    t4 = t[..., :4]
    got = hidden_mse_loss(s.double(), t4.half(), mask=mask)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(
        F.mse_loss(s[mask.bool()], t4.half().float()[mask.bool()]).item(), rel=1e-5
    )


# ---------------------------------------------------------------- hidden_cosine_loss


def test_cosine_hand_computed():
    s = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]]])
    t = torch.tensor([[[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]]])
    # cosines: 0, 1, -1 -> losses 1, 0, 2
    assert hidden_cosine_loss(s, t).item() == pytest.approx(1.0, abs=1e-6)
    assert hidden_cosine_loss(s, t, mask=torch.tensor([[0, 1, 1]])).item() == pytest.approx(
        1.0, abs=1e-6
    )
    assert hidden_cosine_loss(s, t, mask=torch.tensor([[1, 1, 0]])).item() == pytest.approx(
        0.5, abs=1e-6
    )


def test_cosine_matches_pytorch(states):
    s, t, mask, proj = states
    keep = mask.bool()
    want = (1 - F.cosine_similarity(proj(s)[keep], t[keep], dim=-1)).mean()
    assert hidden_cosine_loss(s, t, proj, mask).item() == pytest.approx(want.item(), rel=1e-5)
    # scale-invariant: multiplying the teacher's states changes nothing
    assert hidden_cosine_loss(s, 7.0 * t, proj, mask).item() == pytest.approx(want.item(), rel=1e-5)


def test_cosine_mask_equals_sliced_and_grad(states):
    s, t, mask, proj = states
    m = torch.tensor([[1, 1, 0, 0, 0]])
    assert hidden_cosine_loss(s[2:], t[2:], proj, m).item() == pytest.approx(
        hidden_cosine_loss(s[2:, :2], t[2:, :2], proj).item(), rel=1e-6
    )
    hidden_cosine_loss(s, t, proj, mask).backward()
    assert proj.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- attention_transfer_loss


def test_attention_kl_hand_computed():
    # one query row: teacher (3/4, 1/4), student (1/2, 1/2)
    t = torch.tensor([[[[0.75, 0.25], [0.5, 0.5]]]])
    s = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]])
    kl_row0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert attention_transfer_loss(s, t).item() == pytest.approx(kl_row0 / 2, abs=1e-6)
    # mse: squared differences 1/16, 1/16, 0, 0 over 4 pairs
    assert attention_transfer_loss(s, t, kind="mse").item() == pytest.approx(2 / 16 / 4, abs=1e-7)


def test_attention_kl_matches_pytorch_kldiv():
    s, t = random_attention(2, 3, 5, seed=1), random_attention(2, 3, 5, seed=2)
    want = F.kl_div(s.log().reshape(-1, 5), t.reshape(-1, 5), reduction="batchmean")
    assert attention_transfer_loss(s, t).item() == pytest.approx(want.item(), rel=1e-5)
    assert attention_transfer_loss(s, t, kind="mse").item() == pytest.approx(
        F.mse_loss(s, t).item(), rel=1e-5
    )


def test_attention_head_counts_differ_compares_head_means():
    s, t = random_attention(2, 2, 4, seed=3), random_attention(2, 6, 4, seed=4)
    sm, tm = s.mean(1), t.mean(1)
    want = F.kl_div(sm.log().reshape(-1, 4), tm.reshape(-1, 4), reduction="batchmean")
    assert attention_transfer_loss(s, t).item() == pytest.approx(want.item(), rel=1e-5)
    assert attention_transfer_loss(s, t, kind="mse").item() == pytest.approx(
        F.mse_loss(sm, tm).item(), rel=1e-5
    )


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_attention_mask_equals_sliced(kind):
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    s, t = (
        random_attention(2, 2, 5, seed=5, mask=mask),
        random_attention(2, 2, 5, seed=6, mask=mask),
    )
    got = attention_transfer_loss(s[1:], t[1:], mask[1:], kind=kind)
    want = attention_transfer_loss(s[1:, :, :3, :3], t[1:, :, :3, :3], kind=kind)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # and for kl the whole batch is the mean over all unmasked query rows (5 + 3 per head)
    if kind == "kl":
        full = attention_transfer_loss(s, t, mask)
        a = attention_transfer_loss(s[:1], t[:1])
        assert full.item() == pytest.approx((5 * a.item() + 3 * got.item()) / 8, rel=1e-5)


def test_attention_gradient_flows_to_student_only():
    s = random_attention(1, 2, 4, seed=7).requires_grad_(True)
    t = random_attention(1, 2, 4, seed=8).requires_grad_(True)
    attention_transfer_loss(s, t).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs(states):
    s, t, mask, proj = states
    with pytest.raises(TypeError, match="torch.Tensor"):
        hidden_mse_loss(s.tolist(), t, proj)
    with pytest.raises(TypeError, match="floating-point"):
        hidden_mse_loss(s.long(), t, proj)
    with pytest.raises(ValueError, match="batch, seq, width"):
        hidden_mse_loss(s[0], t[0], proj)
    with pytest.raises(ValueError, match="share \\(batch, seq\\)"):
        hidden_mse_loss(s[:, :4], t, proj)
    with pytest.raises(ValueError, match="projection=nn.Linear"):
        hidden_cosine_loss(s, t)
    with pytest.raises(TypeError, match="callable"):
        hidden_mse_loss(s, t, projection="linear")
    bad = t.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        hidden_mse_loss(s, bad, proj)
    with pytest.raises(ValueError, match="mask must have shape"):
        hidden_mse_loss(s, t, proj, mask[:, :3])
    with pytest.raises(ValueError, match="selects no position"):
        hidden_cosine_loss(s, t, proj, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="empty"):
        hidden_mse_loss(s[:0], t[:0], proj)
    a = random_attention(1, 2, 3, seed=0)
    with pytest.raises(ValueError, match="kind must be"):
        attention_transfer_loss(a, a, kind="l1")
    with pytest.raises(ValueError, match="probabilities"):
        attention_transfer_loss(a * 3 - 1, a)
    with pytest.raises(ValueError, match="batch, heads, seq, seq"):
        attention_transfer_loss(a[0], a[0])
    with pytest.raises(ValueError, match="square"):
        attention_transfer_loss(a[..., :2], a[..., :2])
    with pytest.raises(ValueError, match="share batch and seq"):
        attention_transfer_loss(a, random_attention(1, 2, 4, seed=1))
    with pytest.raises(ValueError, match="mask must have shape"):
        attention_transfer_loss(a, a, torch.ones(1, 4))


# ---------------------------------------------------------------- model-side helpers


def test_uniform_layer_map():
    assert uniform_layer_map(2, 6) == [(1, 3), (2, 6)]
    assert uniform_layer_map(3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert uniform_layer_map(4, 4) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    with pytest.raises(ValueError, match="more layers"):
        uniform_layer_map(7, 6)
    with pytest.raises(ValueError, match="positive int"):
        uniform_layer_map(0, 6)


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    teacher = tiny_bert_student(50, hidden=12, layers=4, heads=3, intermediate=16, max_positions=16)
    ids = [[1, 5, 7, 9, 2], [1, 4, 2], [1, 8, 8, 3, 6, 2]]
    return teacher, ids


def test_teacher_features_match_one_by_one_forward(tiny_pair):
    teacher, ids = tiny_pair
    teacher.train()  # teacher_features must switch to eval mode itself (no dropout)
    feats = teacher_features(
        teacher, ids, hidden_layers=(2, 4), attention_layers=(4,), device="cpu", batch_size=2
    )
    assert (
        teacher.training and teacher.config._attn_implementation != "eager"
    )  # restored afterwards
    assert feats.lengths == [5, 3, 6] and feats.width == 12
    teacher.eval()
    teacher.set_attn_implementation("eager")
    with torch.no_grad():
        for i, x in enumerate(ids):
            out = teacher.base_model(
                input_ids=torch.tensor([x]), output_hidden_states=True, output_attentions=True
            )
            torch.testing.assert_close(
                feats.hidden[i][1], out.hidden_states[4][0], atol=1e-5, rtol=1e-5
            )
            torch.testing.assert_close(
                feats.attentions[i][0], out.attentions[3][0].mean(0), atol=1e-5, rtol=1e-5
            )
    teacher.set_attn_implementation("sdpa")
    assert not feats.hidden[0].requires_grad and not feats.attentions[0].requires_grad
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    batch = feats.for_batch(torch.tensor([1, 2]), mask)
    assert tuple(batch["hidden"][2].shape) == (2, 6, 12) and tuple(
        batch["attentions"][4].shape
    ) == (2, 1, 6, 6)
    assert batch["hidden"][4][0, 3:].abs().sum() == 0
    with pytest.raises(ValueError, match="token counts"):
        feats.for_batch(torch.tensor([0, 2]), mask)
    with pytest.raises(ValueError, match="out of range"):
        teacher_features(teacher, ids, hidden_layers=(5,))
    with pytest.raises(ValueError, match="at least one"):
        teacher_features(teacher, ids)
    only_attn = teacher_features(teacher, ids[1:2], attention_layers=(4,), device="cpu")
    assert only_attn.width == 0 and only_attn.hidden == []
    torch.testing.assert_close(only_attn.attentions[0], feats.attentions[1], atol=1e-5, rtol=1e-5)


def test_feature_student_and_loss_train_projection(tiny_pair):
    teacher, ids = tiny_pair
    feats = teacher_features(
        teacher, ids, hidden_layers=(2, 4), attention_layers=(2, 4), device="cpu"
    )
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    input_ids = torch.tensor([ids[0] + [0], ids[1] + [0, 0, 0]])
    batch = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "index": torch.tensor([0, 1]),
        "labels": torch.tensor([0, -1]),
        "teacher_logits": torch.tensor([[1.0, -1.0], [0.5, 0.0]]),
    }
    values = {}
    for kind in ("logits", "mse", "cosine", "attention"):
        torch.manual_seed(0)
        model = tiny_bert_student(
            50, hidden=8, layers=2, heads=2, intermediate=16, max_positions=16
        )
        student = FeatureStudent(
            model, kind, uniform_layer_map(2, 4), teacher_width=12, teacher_layers=4, seed=0
        )
        assert len(student.projections) == (2 if kind in ("mse", "cosine") else 0)
        loss_fn = make_feature_kd_loss(student, feats, beta=0.5, alpha=0.5, temperature=2.0)
        student.train()
        logits = student(input_ids=input_ids, attention_mask=mask)
        loss = loss_fn(logits, batch)
        loss.backward()
        kd, feat = loss_fn.log[-1]
        assert loss.item() == pytest.approx(kd + 0.5 * feat, rel=1e-5)
        values[kind] = (round(kd, 4), feat > 0)
        if kind in ("mse", "cosine"):
            assert student.projections[0].weight.grad.abs().sum() > 0
    # the same student init and batch give the same logit loss for every kind (attention dropout is off)
    assert len({v[0] for v in values.values()}) == 1
    assert values["logits"][1] is False and all(
        values[k][1] for k in ("mse", "cosine", "attention")
    )
    student.eval()
    assert student(input_ids=input_ids, attention_mask=mask).shape == (2, 2)


def test_feature_student_bad_inputs(tiny_pair):
    teacher, ids = tiny_pair
    model = tiny_bert_student(50, hidden=8, layers=2, heads=2, intermediate=16, max_positions=16)
    with pytest.raises(ValueError, match="kind must be"):
        FeatureStudent(model, "hint")
    with pytest.raises(ValueError, match="teacher_layers"):
        FeatureStudent(model, "mse", [(2, 4)], teacher_width=12)
    with pytest.raises(ValueError, match="out of range"):
        FeatureStudent(model, "mse", [(3, 4)], teacher_width=12, teacher_layers=4)
    with pytest.raises(ValueError, match="embeddings has no attention"):
        FeatureStudent(model, "attention", [(0, 0)], teacher_layers=4)
    with pytest.raises(ValueError, match="teacher_width"):
        FeatureStudent(model, "cosine", [(2, 4)], teacher_layers=4)
    with pytest.raises(TypeError, match="Hugging Face"):
        FeatureStudent(nn.Linear(2, 2))
    feats = teacher_features(teacher, ids, hidden_layers=(4,), device="cpu")
    student = FeatureStudent(model, "mse", [(1, 2)], teacher_width=12, teacher_layers=4)
    with pytest.raises(ValueError, match="lacks teacher layers"):
        make_feature_kd_loss(student, feats)
    with pytest.raises(TypeError, match="needs teacher_feats"):
        make_feature_kd_loss(student, None)
    with pytest.raises(ValueError, match="beta"):
        make_feature_kd_loss(FeatureStudent(model), None, beta=-1.0)
    assert isinstance(feats, TeacherFeatures)
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        set_attention_dropout(model, 1.0)
