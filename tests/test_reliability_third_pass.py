"""Third reliability pass (issue 29): NaN from finite input, statistics on degenerate data, names
that leave their folder, and errors that end deep in torch or Python (docs/reliability.md).

One test per class, parametrised over the examples the held-out attack found; each case fails on
the code before the fix (a NaN, a silent value, a file read outside its folder, or an error that
does not name the argument)."""

import contextlib
import hashlib
import json
import math

import pytest
import torch

from kdhelpers import session
from kdhelpers.augment import augment_token_ids
from kdhelpers.chapters import lm
from kdhelpers.chapters.distributed import DistillConfig, epoch_order, shared_teacher_logits
from kdhelpers.chapters.headline import (
    HeadlinePlan,
    TransferRecipe,
    VocabMap,
    compact_vocabulary,
    embedding_neighbours,
    load_headline_student,
)
from kdhelpers.chapters.selftrain import drop_tokens, target_domain
from kdhelpers.device import seed_everything
from kdhelpers.divergences import forward_kl, generalized_jsd, reverse_kl
from kdhelpers.latency import LatencyStats, speedup
from kdhelpers.losses import attention_transfer_loss, hidden_cosine_loss, hidden_mse_loss
from kdhelpers.models import BagOfEmbeddingsStudent
from kdhelpers.numfmt import num, pct, ratio
from kdhelpers.pseudo import cache_logits, data_fingerprint, model_fingerprint, predict_logits
from kdhelpers.results import load_results, save_results
from kdhelpers.stats import spearman_interval, split_half_agreement
from kdhelpers.targets import latency_history_text
from kdhelpers.teacher import TextSplit, teacher_logits

# ---------------------------------------------------------------- class 1: NaN from finite input


def _mse64(a, b):
    """The float64 reference of hidden_mse_loss without a projection."""
    return float(((a.double() - b.double()) ** 2).mean())


def _cosine_loss64(a, b, eps):
    """The float64 reference of hidden_cosine_loss: 1 - a.b / max(|a||b|, eps), a zero row -> cos 0."""
    x, y = a.double(), b.double()
    denom = (x.norm(dim=-1) * y.norm(dim=-1)).clamp(min=eps)
    cos = (x * y).sum(-1) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return float((1 - cos).mean())


def _nan_projection(width=3):
    proj = torch.nn.Linear(width, width)
    with torch.no_grad():
        proj.weight[0, 0] = float("nan")
    return proj


_ZERO = torch.zeros(2, 3, 4)
_HUGE = torch.full((2, 3, 4), 1e20)
_HUGE_MIXED = _HUGE * torch.tensor([1.0, -1.0, 1.0, 1.0])
_TINY = torch.full((2, 3, 4), 1e-30)
_ONE_FAR = torch.zeros(1, 2, 1000)
_ONE_FAR[0, 0, 0] = 1e20  # (1e20)^2 overflows float32, the mean 5e36 does not
_FAR = torch.tensor([[3e38, -3e38]])  # a row span of 6e38: beyond float32
_FLAT = torch.zeros(1, 2)
_HIGH = torch.full((1, 2), 3e38)  # no span at all, but x / T overflows float32 at T < 1
_IDENTITY_ATTN = torch.eye(3).expand(1, 2, 3, 3).contiguous()  # exact zeros off the diagonal


def _kl64(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) in float64."""
    lp = torch.log_softmax(p_logits.double(), -1)
    lq = torch.log_softmax(q_logits.double(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


CLASS1 = [
    pytest.param(
        lambda: hidden_cosine_loss(_ZERO, _ZERO, eps=0.0),
        _cosine_loss64(_ZERO, _ZERO, 0.0),
        id="cosine-zero-states-eps0",
    ),
    pytest.param(
        lambda: hidden_cosine_loss(_ZERO, _ZERO, eps=0.0) - hidden_cosine_loss(_ZERO, _ZERO),
        0.0,
        id="cosine-zero-states-eps0-is-the-eps-limit",
    ),
    pytest.param(
        lambda: hidden_cosine_loss(_HUGE, _HUGE),
        _cosine_loss64(_HUGE, _HUGE, 1e-8),
        id="cosine-1e20-identical",
    ),
    pytest.param(
        lambda: hidden_cosine_loss(_HUGE, _HUGE_MIXED),
        _cosine_loss64(_HUGE, _HUGE_MIXED, 1e-8),
        id="cosine-1e20-different",
    ),
    pytest.param(
        lambda: hidden_cosine_loss(_TINY, _TINY, eps=0.0),
        _cosine_loss64(_TINY, _TINY, 0.0),
        id="cosine-1e-30-identical-eps0",
    ),
    pytest.param(
        lambda: hidden_mse_loss(_ONE_FAR, torch.zeros_like(_ONE_FAR)),
        _mse64(_ONE_FAR, torch.zeros_like(_ONE_FAR)),
        id="mse-square-overflows-mean-fits",
    ),
    pytest.param(
        lambda: hidden_mse_loss(_HUGE, _HUGE_MIXED),
        (ValueError, "student_hidden and teacher_hidden .* overflows float32"),
        id="mse-true-value-beyond-float32",
    ),
    pytest.param(
        lambda: hidden_mse_loss(torch.ones(1, 2, 3), torch.ones(1, 2, 3), _nan_projection()),
        (ValueError, r"projection\.weight holds NaN"),
        id="mse-nan-projection",
    ),
    pytest.param(
        lambda: hidden_cosine_loss(torch.ones(1, 2, 3), torch.ones(1, 2, 3), _nan_projection()),
        (ValueError, r"projection\.weight holds NaN"),
        id="cosine-nan-projection",
    ),
    pytest.param(
        lambda: attention_transfer_loss(_IDENTITY_ATTN, _IDENTITY_ATTN, eps=0.0),
        0.0,
        id="attention-kl-exact-zeros-eps0",
    ),
    pytest.param(
        lambda: attention_transfer_loss(_IDENTITY_ATTN, torch.full((1, 2, 3, 3), 1 / 3), eps=0.0),
        (ValueError, "student_attn gives probability 0 .* eps"),
        id="attention-kl-infinite-eps0",
    ),
    pytest.param(
        lambda: hidden_cosine_loss(_ZERO, _ZERO, eps=-1.0),
        (ValueError, "eps must be a finite number >= 0"),
        id="cosine-negative-eps",
    ),
    pytest.param(lambda: forward_kl(_FAR, _FLAT), _kl64(_FLAT, _FAR), id="forward-kl-logits-3e38"),
    pytest.param(lambda: reverse_kl(_FLAT, _FAR), _kl64(_FLAT, _FAR), id="reverse-kl-logits-3e38"),
    pytest.param(lambda: forward_kl(_FAR, _FAR), 0.0, id="forward-kl-equal-logits-3e38"),
    pytest.param(
        lambda: generalized_jsd(_FAR, _FAR.flip(-1)), math.log(2), id="jsd-disjoint-logits-3e38"
    ),
    pytest.param(
        lambda: forward_kl(_FAR, _FAR.flip(-1)),
        (ValueError, "forward KL .* overflows float32"),
        id="forward-kl-true-value-beyond-float32",
    ),
    pytest.param(
        lambda: forward_kl(_HIGH, _HIGH, temperature=0.5), 0.0, id="forward-kl-high-logits-at-T-0.5"
    ),
    pytest.param(
        lambda: generalized_jsd(_HIGH, _HIGH, temperature=0.5), 0.0, id="jsd-high-logits-at-T-0.5"
    ),
]


@pytest.mark.parametrize(("call", "expected"), CLASS1)
def test_class1_finite_input_gives_the_float64_value_or_a_named_error(call, expected):
    if isinstance(expected, tuple):
        with pytest.raises(expected[0], match=expected[1]):
            call()
        return
    got = call()
    assert got.dtype == torch.float32 and bool(torch.isfinite(got)), got
    assert float(got) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_class1_gradients_stay_finite_where_the_value_is_defined():
    for name, loss, a, b in (
        ("cosine, zero states", lambda x, b: hidden_cosine_loss(x, b, eps=0.0), _ZERO, _ZERO),
        ("cosine, 1e20 states", hidden_cosine_loss, _HUGE, _HUGE_MIXED),
        ("mse, one far value", hidden_mse_loss, _ONE_FAR, torch.zeros_like(_ONE_FAR)),
    ):
        x = a.clone().requires_grad_(True)
        loss(x, b).backward()
        assert bool(torch.isfinite(x.grad).all()), name
    s = _IDENTITY_ATTN.clone().requires_grad_(True)
    attention_transfer_loss(s, _IDENTITY_ATTN, eps=0.0).backward()
    assert bool(torch.isfinite(s.grad).all())
    x = _FAR.clone().requires_grad_(True)
    forward_kl(x, _FLAT).backward()
    assert bool(torch.isfinite(x.grad).all())


# ---------------------------------------------------------------- class 2: statistics on degenerate data

CLASS2 = [
    pytest.param(
        lambda: spearman_interval([3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0], n_resamples=100),
        "x has no variation: all 4 values are 3",
        id="spearman-constant-x",
    ),
    pytest.param(
        lambda: spearman_interval([1.0, 2.0, 3.0, 4.0], [0.5] * 4, n_resamples=100),
        "y has no variation",
        id="spearman-constant-y",
    ),
    pytest.param(
        lambda: split_half_agreement([[1, 1, 1], [2, 1], [1, 3, 1, 1]], n_splits=3),
        r"rater_scores \(each item's share of positive ratings\) has no variation",
        id="split-half-unanimous-raters",
    ),
    pytest.param(
        lambda: split_half_agreement([[1, -1], [1, 1], [1, -1]], n_splits=1, seed=0),
        "half of split 0 .* has no variation",
        id="split-half-a-half-without-variation",
    ),
    pytest.param(
        lambda: split_half_agreement([[1, -1], [1, -1], [1, 0]], n_splits=1, seed=1),
        "exactly opposite order .* Spearman-Brown",
        id="split-half-perfect-disagreement",
    ),
]


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@pytest.mark.parametrize(("call", "message"), CLASS2)
def test_class2_degenerate_data_is_refused_saying_why_never_nan(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- class 3: names that leave their folder


def _outside_file(tmp_path, name="secret.bin", text="not yours"):
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    target = outside / name
    target.write_text(text)
    return target


def _cache_name(teacher, ids, input_ids, name):
    """The file name cache_logits gives these logits (see kdhelpers.pseudo.cache_logits)."""
    fingerprint = hashlib.sha256(
        (model_fingerprint(teacher) + data_fingerprint(ids, input_ids)).encode()
    ).hexdigest()
    return f"{name}-{fingerprint[:16]}.safetensors"


def _tiny_teacher():
    torch.manual_seed(0)
    return BagOfEmbeddingsStudent(vocab_size=10, embed_dim=4, hidden=4).eval()


_IDS, _INPUT_IDS = ["a", "b"], [[1, 2, 3], [4, 5]]


class _OneProcess:
    """The parts of an accelerate.Accelerator that shared_teacher_logits uses, for one process."""

    device = torch.device("cpu")
    is_main_process = True

    def main_process_first(self):
        return contextlib.nullcontext()


def _case_headline_dotdot(tmp_path):
    _outside_file(tmp_path, "student.safetensors")
    return lambda: load_headline_student({"student_checkpoint": "../outside/student"})


def _case_headline_absolute(tmp_path):
    target = _outside_file(tmp_path, "student.safetensors")
    return lambda: load_headline_student({"student_checkpoint": str(target.with_suffix(""))})


def _case_headline_symlink(tmp_path):
    target = _outside_file(tmp_path, "student.safetensors")
    (tmp_path / "checkpoints" / "student.safetensors").symlink_to(target)
    return lambda: load_headline_student({"student_checkpoint": "student"})


def _case_save_results_symlink(tmp_path):
    target = _outside_file(tmp_path, "05_x.json", "{}")
    (tmp_path / "results" / "05_x.json").symlink_to(target)
    return lambda: save_results("05_x", {"a": 1.0}, "standard", folder=tmp_path / "results")


def _case_load_results_symlink(tmp_path):
    target = _outside_file(tmp_path, "05_x.json", json.dumps({"profile": "standard"}))
    (tmp_path / "results" / "05_x.json").symlink_to(target)
    return lambda: load_results("05_x", folder=tmp_path / "results")


def _case_cache_logits_symlink(tmp_path):
    teacher = _tiny_teacher()
    target = _outside_file(tmp_path, "logits.safetensors")
    (tmp_path / "cache" / _cache_name(teacher, _IDS, _INPUT_IDS, "t")).symlink_to(target)
    return lambda: cache_logits(
        teacher, _IDS, _INPUT_IDS, tmp_path / "cache", name="t", progress=False, device="cpu"
    )


def _case_teacher_logits_symlink(tmp_path):
    teacher = _tiny_teacher()
    split = TextSplit(_IDS, ["a", "b"], _INPUT_IDS, torch.tensor([0, 1]))
    target = _outside_file(tmp_path, "logits.safetensors")
    (tmp_path / "cache" / _cache_name(teacher, _IDS, _INPUT_IDS, "teacher")).symlink_to(target)
    return lambda: teacher_logits(teacher, split, "cpu", folder=tmp_path / "cache")


def _case_shared_teacher_logits_symlink(tmp_path):
    teacher = _tiny_teacher()
    target = _outside_file(tmp_path, "logits.safetensors")
    (tmp_path / "cache" / _cache_name(teacher, _IDS, _INPUT_IDS, "teacher")).symlink_to(target)
    return lambda: shared_teacher_logits(
        _OneProcess(), teacher, _IDS, _INPUT_IDS, tmp_path / "cache"
    )


def _case_load_or_train_lm_symlink(tmp_path):
    target = _outside_file(tmp_path, "lm.safetensors")
    (tmp_path / "checkpoints" / "lm.safetensors").symlink_to(target)
    model = torch.nn.Linear(2, 2)
    return lambda: lm.load_or_train_lm(
        model, "lm", lambda m: {"steps": 0}, folder=tmp_path / "checkpoints"
    )


_FIELD = r"record\['student_checkpoint'\]"
CLASS3 = [
    pytest.param(_case_headline_dotdot, _FIELD + r" .* '\.\.' part", id="headline-student-dotdot"),
    pytest.param(_case_headline_absolute, _FIELD + " is an absolute path", id="headline-student-absolute"),
    pytest.param(_case_headline_symlink, _FIELD + " leads to .* outside", id="headline-student-symlink"),
    pytest.param(_case_save_results_symlink, "notebook leads to .* outside", id="save-results-symlink"),
    pytest.param(_case_load_results_symlink, "notebook leads to .* outside", id="load-results-symlink"),
    pytest.param(_case_cache_logits_symlink, "name leads to .* outside", id="cache-logits-symlink"),
    pytest.param(_case_teacher_logits_symlink, "name leads to .* outside", id="teacher-logits-symlink"),
    pytest.param(_case_shared_teacher_logits_symlink, "name leads to .* outside", id="shared-teacher-logits-symlink"),
    pytest.param(_case_load_or_train_lm_symlink, "name leads to .* outside", id="load-or-train-lm-symlink"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "message"), CLASS3)
def test_class3_names_joined_to_a_folder_stay_inside_it(case, message, tmp_path, monkeypatch):
    for sub in ("checkpoints", "results", "cache"):
        (tmp_path / sub).mkdir()
    monkeypatch.setenv("KD_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    call = case(tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / "outside").iterdir()}
    with pytest.raises(ValueError, match=message):
        call()
    # nothing outside the folder was read into a result or replaced
    assert {p: p.read_bytes() for p in (tmp_path / "outside").iterdir()} == before


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("..", "'\\.\\.' part"),
        ("a/../../b", "'\\.\\.' part"),
        ("/etc/passwd", "absolute path"),
        ("", "non-empty"),
        ("a\x00b", "non-empty"),
        (".", "outside the folder"),
    ],
)
def test_class3_inside_refuses_every_way_out(name, message, tmp_path):
    from kdhelpers.paths import inside

    with pytest.raises(ValueError, match=message):
        inside(tmp_path, name, "name")
    with pytest.raises(TypeError, match="name must be a file name"):
        inside(tmp_path, 5, "name")
    assert inside(tmp_path, "sub/a.json", "name") == tmp_path / "sub" / "a.json"


# ---------------------------------------------------------------- class 5: errors that name the argument


def _tiny_lm():
    return lm.make_lm(vocab_size=20, n_positions=16, n_embd=8, n_layer=1, n_head=1)


_RECIPE = TransferRecipe(tang_copies=0, neighbour_copies=0)
_SEED_RANGE = r"seed must be an int seed in \[0, 2\*\*63 - 1\]"

CLASS5 = [
    pytest.param(
        lambda: lm.lm_logits(_tiny_lm(), torch.zeros(1, 0, dtype=torch.long), torch.ones(1, 0)),
        (ValueError, r"input_ids must have shape \(batch, seq\) .* empty sequence"),
        id="lm-logits-of-an-empty-sequence",
    ),
    pytest.param(
        lambda: lm.project_logits(torch.randn(2, 5), torch.tensor([0.0, 1, 1, 0, 1]), 2),
        (TypeError, r"mapping must hold integer target ids \(got dtype torch.float32\)"),
        id="project-logits-float-mapping",
    ),
    pytest.param(
        lambda: predict_logits(_tiny_teacher(), _INPUT_IDS, batch_size=0, sort_by_length=False),
        (ValueError, r"batch_size must be an int >= 1 \(got 0\)"),
        id="predict-logits-unsorted-batch-size-0",
    ),
    pytest.param(
        lambda: seed_everything(2**64), (ValueError, _SEED_RANGE), id="seed-everything-2**64"
    ),
    pytest.param(
        lambda: session.start("quick", 2**64, "cpu"),
        (ValueError, _SEED_RANGE),
        id="session-start-2**64",
    ),
    pytest.param(
        lambda: epoch_order(5, 2**64, 0), (ValueError, _SEED_RANGE), id="epoch-order-2**64"
    ),
    pytest.param(lambda: len(epoch_order(5, 2**62, 1)), 5, id="epoch-order-large-valid-seed-works"),
    pytest.param(
        lambda: augment_token_ids([[1, 2, 3]], seed=2**64),
        (ValueError, _SEED_RANGE),
        id="augment-2**64",
    ),
    pytest.param(
        lambda: drop_tokens([[1, 2, 3]], special_ids=(1,), seed=2**64),
        (ValueError, _SEED_RANGE),
        id="drop-tokens-2**64",
    ),
    pytest.param(
        lambda: DistillConfig(alpha="0.5"),
        (TypeError, "alpha must be a number .* float"),
        id="distill-config-string-alpha",
    ),
    pytest.param(
        lambda: latency_history_text([{"speedup_b1": None, "note": "retimed"}]),
        (TypeError, r"history\[0\]\['speedup_b1'\] must be a number \(got NoneType None\)"),
        id="latency-history-null-median",
    ),
    pytest.param(
        lambda: latency_history_text(
            [
                {
                    "speedup_b1": 11.8,
                    "note": "alone",
                    "repeats": [{"speedup_b1": 11.9}, {"speedup_b1": None}],
                }
            ]
        ),
        (TypeError, r"history\[0\]\['repeats'\]\[1\]\['speedup_b1'\]"),
        id="latency-history-null-repeat",
    ),
    pytest.param(
        lambda: speedup(LatencyStats("a", None, 1.0, 2.0, 200, 1, 1, 10), None),
        (TypeError, "median_ms must be a number"),
        id="latency-stats-null-median",
    ),
    pytest.param(
        lambda: compact_vocabulary([[1, 2]], 10, special_ids=(0, 50), unk_id=3),
        (ValueError, r"special_ids\[1\] must be an int in \[0, 9\] \(got 50\)"),
        id="compact-vocabulary-special-id-outside-the-table",
    ),
    pytest.param(
        lambda: compact_vocabulary([[1, 2]], 10, special_ids=(0,), unk_id=30),
        (ValueError, r"unk_id must be an int in \[0, 9\] \(got 30\)"),
        id="compact-vocabulary-unk-outside-the-table",
    ),
    pytest.param(
        lambda: VocabMap((0, 3, 50), 3, 10).lookup(),
        (ValueError, r"kept\[2\] must be an int in \[0, 9\] \(got 50\)"),
        id="vocab-map-kept-outside-the-table",
    ),
    pytest.param(
        lambda: embedding_neighbours(torch.randn(10, 4), [1, 2, 30], k=1),
        (ValueError, r"candidates\[2\] must be an int in \[0, 9\] \(got 30\)"),
        id="neighbour-candidate-outside-the-table",
    ),
    pytest.param(
        lambda: embedding_neighbours(torch.randn(10, 4), [1, 2, -3], k=1),
        (ValueError, r"candidates\[2\] must be an int in \[0, 9\] \(got -3\)"),
        id="neighbour-candidate-negative",
    ),
    pytest.param(
        lambda: HeadlinePlan(recipe=_RECIPE, sizes=(0,), seeds=0, epochs=1),
        (TypeError, r"seeds must be a tuple or list, e\.g\. seeds=\(0, 1, 2\) \(got int 0\)"),
        id="headline-plan-int-seeds",
    ),
    pytest.param(
        lambda: HeadlinePlan(recipe=_RECIPE, sizes=[0], seeds=[0, 1], epochs=1).seeds,
        (0, 1),
        id="headline-plan-list-seeds-work",
    ),
    pytest.param(
        lambda: target_domain("movies", None, 16, select_share=1.0),
        (ValueError, "select_share must be < 1 .* no text to learn from"),
        id="target-domain-select-share-1",
    ),
    pytest.param(lambda: num(1.5e120), "15" + "0" * 119 + ".000", id="num-1.5e120"),
    pytest.param(lambda: pct(-1.5e120, 0), "-15" + "0" * 121 + "%", id="pct-minus-1.5e120"),
    pytest.param(lambda: ratio(1.5e120), "15" + "0" * 119 + "x", id="ratio-1.5e120"),
]


@pytest.mark.parametrize(("call", "expected"), CLASS5)
def test_class5_bad_arguments_are_named_at_the_public_boundary(call, expected):
    if isinstance(expected, tuple) and len(expected) == 2 and isinstance(expected[0], type):
        with pytest.raises(expected[0], match=expected[1]):
            call()
        return
    assert call() == expected
