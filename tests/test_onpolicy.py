"""kdhelpers.chapters.lm.onpolicy: GKD-style on-policy distillation of tiny character LMs, generation
helpers, sample metrics."""

import copy
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kdhelpers.chapters import lm
from kdhelpers.chapters.lm.onpolicy import (
    FORBIDDEN_IDS,
    EvalConfig,
    OnPolicyConfig,
    continuation_perplexity,
    distill_on_policy,
    distinct_n,
    exposure_bias_gap,
    greedy_continuations,
    onpolicy_prompts,
    repetition_rate,
    sample_continuations,
    sample_metrics,
    sequence_kd_targets,
    token_entropy,
)
from kdhelpers.divergences import DivergenceConfig
from kdhelpers.losses import kd_kl

TEXTS = ["the cat sat.", "a dog ran!", "the end", "hat and mat", "o", "cats sat on mats"]
K, NEW = 3, 6


@pytest.fixture(scope="module")
def tok():
    return lm.build_char_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def seqs(tok):
    return tok.encode_batch(TEXTS)


def tiny(vocab_size, seed=0, n_embd=16):
    return lm.make_lm(
        vocab_size, n_layer=1, n_embd=n_embd, n_head=2, n_positions=32, dropout=0.0, seed=seed
    )


@pytest.fixture(scope="module")
def teacher(tok):
    return tiny(tok.vocab_size, seed=1)


def config(**kw):
    base = dict(steps=4, batch_size=3, lr=1e-2, lmbda=0.5, prompt_len=K, max_new_tokens=NEW, seed=0)
    base.update(kw)
    return OnPolicyConfig(**base)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- generation


def test_sample_continuations_shapes_and_seeds(tok, seqs, teacher):
    prompts = [s[:K] for s in seqs] + [seqs[0][:2]]  # mixed prompt lengths are fine
    out = sample_continuations(teacher, prompts, NEW, temperature=1.5, seed=3, batch_size=2)
    assert len(out) == len(prompts)
    for p, s in zip(prompts, out, strict=True):
        assert s[: len(p)] == p and len(p) < len(s) <= len(p) + NEW
        tail = s[len(p) :]
        assert not set(tail) & set(FORBIDDEN_IDS)
        assert lm.EOS_ID not in tail[:-1]
        assert tail[-1] == lm.EOS_ID or len(tail) == NEW
    # the same seed and batch size give the same samples (the draws depend on the batching)
    assert out == sample_continuations(teacher, prompts, NEW, temperature=1.5, seed=3, batch_size=2)
    assert out != sample_continuations(teacher, prompts, NEW, temperature=1.5, seed=4, batch_size=2)
    assert not teacher.training


def test_greedy_matches_argmax_without_cache(seqs, teacher):
    prompts = [s[:K] for s in seqs]
    got = greedy_continuations(teacher, prompts, NEW)
    for p, s in zip(prompts, got, strict=True):
        ref = list(p)
        with torch.no_grad():
            for _ in range(NEW):
                logits = teacher(input_ids=torch.tensor([ref])).logits[0, -1].clone()
                logits[list(FORBIDDEN_IDS)] = -math.inf
                ref.append(int(logits.argmax()))
                if ref[-1] == lm.EOS_ID:
                    break
        assert s == ref
    # a tiny temperature samples the mode
    assert sample_continuations(teacher, prompts, NEW, temperature=1e-6, seed=0) == got


def test_sequence_kd_targets_are_teacher_greedy_outputs(seqs, teacher):
    out = sequence_kd_targets(teacher, seqs, prompt_len=K, max_new_tokens=NEW)
    long_enough = [s for s in seqs if len(s) > K]
    assert (
        len(long_enough) == len(seqs) - 1
    )  # "o" = [bos, o, eos] has no token after a 3-token prompt
    assert out == greedy_continuations(teacher, [s[:K] for s in long_enough], NEW)
    assert onpolicy_prompts(seqs, K) == long_enough


def test_generation_errors(tok, seqs, teacher):
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample_continuations(teacher, [seqs[0][:K]], 40)
    with pytest.raises(ValueError, match="prompts"):
        greedy_continuations(teacher, [[]], 3)
    with pytest.raises(ValueError, match="vocabulary"):
        greedy_continuations(teacher, [[1, 999]], 3)
    with pytest.raises(ValueError, match="temperature"):
        sample_continuations(teacher, [seqs[0][:K]], 3, temperature=0.0)
    with pytest.raises(ValueError, match="prompt_len"):
        onpolicy_prompts(seqs, 100)


# ---------------------------------------------------------------- the training loop


def test_lmbda_zero_equals_off_policy_token_kd_reference(tok, seqs, teacher):
    cfg = config(lmbda=0.0, divergence="forward", steps=5, max_grad_norm=None)
    student = tiny(tok.vocab_size, seed=2, n_embd=8)
    start = params(student)
    history = distill_on_policy(student, teacher, seqs, cfg, device="cpu")
    assert history["on_policy"] == [False] * 5 and history["student_generated_tokens"] == 0

    # reference: the reference continuations, forward KL at T=1 via kdhelpers.losses.kd_kl, plain AdamW
    ref = tiny(tok.vocab_size, seed=2, n_embd=8)
    ref.load_state_dict(start)
    opt = torch.optim.AdamW(ref.parameters(), lr=cfg.lr, weight_decay=0.0)
    pool = [s for s in seqs if len(s) > K]
    tokens, losses = 0, []
    for rows in history["rows"]:
        batch = [pool[i][: K + NEW] for i in rows]
        ids, attn = lm.pad_batch(batch)
        mask = attn[:, 1:].bool().clone()
        mask[:, : K - 1] = False  # targets 1..K-1 are prompt tokens
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=attn).logits
        ref.eval()
        s_logits = ref(input_ids=ids, attention_mask=attn).logits
        loss = kd_kl(s_logits[:, :-1], t_logits[:, :-1], temperature=1.0, mask=mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        tokens += sum(len(s) for s in batch)
    assert history["loss"] == pytest.approx(losses, rel=1e-5, abs=1e-9)
    for name, value in ref.state_dict().items():
        assert torch.allclose(student.state_dict()[name], value, atol=1e-6), name
    assert history["teacher_tokens"] == history["teacher_scored_tokens"] == tokens
    # every sequence of the pool is used once per epoch of the seeded permutation
    flat = [i for rows in history["rows"] for i in rows]
    assert sorted(flat[: len(pool)]) == list(range(len(pool)))


def test_prompt_and_padding_positions_carry_no_loss(tok, seqs, teacher):
    class Noisy(nn.Module):
        """The teacher with junk logits wherever the target is a prompt token or padding."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, **kw):
            logits = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, **kw
            ).logits.clone()
            junk = 50 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(9))
            keep = torch.zeros(logits.shape[:2], dtype=torch.bool)
            keep[:, K - 1 : -1] = attention_mask[
                :, K:
            ].bool()  # positions that predict a continuation token
            return SimpleNamespace(logits=torch.where(keep[..., None], logits, junk))

    for lmbda in (0.0, 1.0):
        a, b = tiny(tok.vocab_size, seed=2, n_embd=8), tiny(tok.vocab_size, seed=2, n_embd=8)
        cfg = config(lmbda=lmbda)
        ha = distill_on_policy(a, teacher, seqs, cfg, device="cpu")
        hb = distill_on_policy(b, Noisy(teacher), seqs, cfg, device="cpu")
        assert ha["loss"] == pytest.approx(hb["loss"], rel=1e-6)
        assert ha["loss_tokens"] == hb["loss_tokens"]


def test_teacher_gets_no_gradient_and_stays_unchanged(tok, seqs, teacher):
    before = params(teacher)
    student = tiny(tok.vocab_size, seed=2, n_embd=8)
    distill_on_policy(student, teacher, seqs, config(lmbda=0.5, divergence="reverse"), device="cpu")
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training


def test_deterministic_with_a_seed(tok, seqs, teacher):
    runs = []
    for seed in (0, 0, 1):
        student = tiny(tok.vocab_size, seed=2, n_embd=8)
        h = distill_on_policy(
            student, teacher, seqs, config(lmbda=0.5, seed=seed, steps=6), device="cpu"
        )
        runs.append((h, params(student)))
    (h0, p0), (h1, p1), (h2, _) = runs
    assert (
        h0["loss"] == h1["loss"] and h0["on_policy"] == h1["on_policy"] and h0["rows"] == h1["rows"]
    )
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    assert (h0["on_policy"], h0["rows"]) != (h2["on_policy"], h2["rows"])
    # the coin is Python's random.Random(seed), drawn once per step, on-policy when below lmbda
    import random

    coin = random.Random(0)
    assert h0["on_policy"] == [coin.random() < 0.5 for _ in range(6)]


def test_token_budget_counting_is_exact(tok, seqs, teacher):
    student = tiny(tok.vocab_size, seed=2, n_embd=8)
    h = distill_on_policy(student, teacher, seqs, config(lmbda=1.0, steps=3), device="cpu")
    assert h["on_policy_steps"] == 3
    # every scored on-policy sequence is a K-token prompt plus the student's generated tokens
    assert h["teacher_scored_tokens"] == 3 * 3 * K + h["student_generated_tokens"]
    assert h["teacher_tokens"] == h["teacher_scored_tokens"] and h["teacher_generated_tokens"] == 0
    assert h["loss_tokens"] == h["student_generated_tokens"]
    assert h["teacher_tokens_per_step"][-1] == h["teacher_tokens"]

    # seq_kd: the teacher also generates (its greedy continuations, prompt and new tokens counted)
    student = tiny(tok.vocab_size, seed=2, n_embd=8)
    h = distill_on_policy(
        student, teacher, seqs, config(lmbda=0.0, seq_kd=True, steps=2), device="cpu"
    )
    pool = onpolicy_prompts(seqs, K)
    generated = [
        greedy_continuations(teacher, [pool[i][:K] for i in rows], NEW) for rows in h["rows"]
    ]
    expected = sum(len(s) for batch in generated for s in batch)
    assert h["teacher_generated_tokens"] == expected == h["teacher_scored_tokens"]
    assert h["teacher_tokens"] == 2 * expected

    # a budget stops training before the step that would start beyond it
    student = tiny(tok.vocab_size, seed=2, n_embd=8)
    h = distill_on_policy(
        student, teacher, seqs, config(lmbda=0.0, steps=50, max_teacher_tokens=60), device="cpu"
    )
    per_step = h["teacher_tokens_per_step"]
    assert per_step[-2] < 60 <= per_step[-1] and h["steps_run"] == len(per_step) < 50


def test_config_and_argument_errors(tok, seqs, teacher):
    for kw, name in (
        (dict(lmbda=1.5), "lmbda"),
        (dict(beta=-1.0), "beta"),
        (dict(steps=0), "steps"),
        (dict(divergence="kl"), "divergence"),
        (dict(temperature=0.0), "temperature"),
        (dict(max_teacher_tokens=0), "max_teacher_tokens"),
        (dict(prompt_len=0), "prompt_len"),
    ):
        with pytest.raises((TypeError, ValueError), match=name):
            config(**kw)
    with pytest.raises(TypeError, match="seq_kd"):
        config(seq_kd=1)
    assert config(divergence="jsd", beta=0.2).divergence_config == DivergenceConfig("jsd", 0.2, 1.0)
    student = tiny(tok.vocab_size, seed=2, n_embd=8)
    with pytest.raises(ValueError, match="max_new_tokens"):
        distill_on_policy(student, teacher, seqs, config(max_new_tokens=40), device="cpu")
    with pytest.raises(ValueError, match="different"):
        distill_on_policy(teacher, teacher, seqs, config(), device="cpu")
    with pytest.raises(TypeError, match="config"):
        distill_on_policy(student, teacher, seqs, {"steps": 1}, device="cpu")
    with pytest.raises(ValueError, match="vocabulary"):
        distill_on_policy(student, teacher, [[1, 2, 3, 4, 500]], config(), device="cpu")


# ---------------------------------------------------------------- metrics


def test_distinct_n_and_repetition_rate_by_hand():
    seqs = [[1, 5, 6, 5, 6, 5, 2], [1, 7, 8, 9]]
    # after a 1-token prompt, eos dropped: [5, 6, 5, 6, 5] and [7, 8, 9]
    # bigrams: (5,6) (6,5) (5,6) (6,5) | (7,8) (8,9): 4 distinct of 6
    assert distinct_n(seqs, 2, prompt_len=1) == pytest.approx(4 / 6)
    # within-sequence repetition: 1 - 2/4 and 0
    assert repetition_rate(seqs, 2, prompt_len=1) == pytest.approx(0.25)
    assert distinct_n(seqs, 1, prompt_len=1) == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="n"):
        distinct_n(seqs, 0)
    with pytest.raises(ValueError, match="prompt_len"):
        repetition_rate(seqs, 9, prompt_len=1)


def test_continuation_perplexity_matches_lm_perplexity(seqs, teacher):
    # prompt_len=1 (just bos) scores every target, as kdhelpers.chapters.lm.perplexity does
    assert continuation_perplexity(teacher, seqs, 1, batch_size=4) == pytest.approx(
        lm.perplexity(teacher, seqs, device="cpu"), rel=1e-6
    )
    # and by hand for a prompt of K tokens
    ids = torch.tensor([seqs[0]])
    with torch.no_grad():
        logp = torch.log_softmax(teacher(input_ids=ids).logits[0, :-1], -1)
    nll = -logp[torch.arange(K - 1, len(seqs[0]) - 1), ids[0, K:]].mean()
    assert continuation_perplexity(teacher, seqs[:1], K) == pytest.approx(
        math.exp(float(nll)), rel=1e-6
    )


def test_exposure_bias_gap_and_sample_metrics(tok, seqs, teacher):
    cfg = EvalConfig(prompt_len=K, max_new_tokens=NEW, seed=5)
    same = exposure_bias_gap(copy.deepcopy(teacher), teacher, seqs, cfg)
    assert same["teacher_forced"] == pytest.approx(0.0, abs=1e-6) and same["gap"] == pytest.approx(
        0.0, abs=1e-6
    )
    student = tiny(tok.vocab_size, seed=3, n_embd=8)
    gap = exposure_bias_gap(student, teacher, seqs, cfg)
    assert gap["gap"] == pytest.approx(gap["free_running"] - gap["teacher_forced"])
    assert gap["teacher_forced"] > 0 and gap["free_running"] > 0
    # teacher-forced part by hand: forward KL over the reference continuation tokens
    pool = onpolicy_prompts(seqs, K)
    total, n = 0.0, 0
    for s in pool:
        ids = torch.tensor([s[: K + NEW]])
        with torch.no_grad():
            q = torch.log_softmax(student(input_ids=ids).logits[0, K - 1 : -1].double(), -1)
            p = torch.log_softmax(teacher(input_ids=ids).logits[0, K - 1 : -1].double(), -1)
        total += float((p.exp() * (p - q)).sum())
        n += ids.shape[1] - K
    assert gap["teacher_forced"] == pytest.approx(total / n, rel=1e-5)
    metrics = sample_metrics(student, teacher, seqs, cfg)
    assert set(metrics) == {
        "teacher_perplexity",
        "distinct_n",
        "repetition_rate",
        "exposure_teacher_forced",
        "exposure_free_running",
        "exposure_gap",
    }
    assert metrics["exposure_gap"] == pytest.approx(gap["gap"])
    samples = sample_continuations(student, [s[:K] for s in pool], NEW, seed=5)
    assert metrics["teacher_perplexity"] == pytest.approx(
        continuation_perplexity(teacher, samples, K)
    )
    assert 0 < metrics["distinct_n"] <= 1 and 0 <= metrics["repetition_rate"] < 1
    with pytest.raises(TypeError, match="config"):
        sample_metrics(student, teacher, seqs, {"prompt_len": 3})


# ---------------------------------------------------------------- entropy, settings, TRL bridge


def test_token_entropy_matches_a_hand_computation(seqs, teacher):
    k = 2
    got = token_entropy(teacher, seqs, prompt_len=k, batch_size=2)
    total, n = 0.0, 0
    with torch.no_grad():
        for s in seqs:
            if len(s) <= k:
                continue
            probs = torch.softmax(teacher(input_ids=torch.tensor([s])).logits[0].double(), -1)
            for pos in range(k - 1, len(s) - 1):  # the positions that predict tokens k .. end
                p = probs[pos]
                total += float(-(p * p.log()).sum())
                n += 1
    assert got == pytest.approx(total / n, rel=1e-5)


def test_token_entropy_of_a_uniform_model_is_log_vocab(tok, seqs):
    model = lm.make_lm(tok.vocab_size, n_layer=1, n_embd=8, n_head=2, n_positions=32, seed=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: the uniform distribution
    assert token_entropy(model, seqs) == pytest.approx(math.log(tok.vocab_size), rel=1e-6)
    with pytest.raises(ValueError, match="prompt_len"):
        token_entropy(model, [[1, 2]], prompt_len=2)


def test_gkd_settings_are_checked():
    base = lm.LM_GKD_SETTINGS["quick"]
    assert {"quick", "standard", "full"} <= set(lm.LM_GKD_SETTINGS)
    with pytest.raises(ValueError, match="teacher_budget"):
        dataclasses.replace(base, teacher_budget=0)
    with pytest.raises(TypeError, match="gap_student"):
        dataclasses.replace(base, gap_student=(1, 8, 2))


def test_trl_bridge_refuses_what_gkdtrainer_cannot_do(tok, seqs, teacher):
    student = tiny(tok.vocab_size, seed=2, n_embd=8)
    for change, match in (
        (dict(loss_temperature=2.0), "loss_temperature"),
        (dict(seq_kd=True), "seq_kd"),
        (dict(max_teacher_tokens=100), "max_teacher_tokens"),
    ):
        with pytest.raises(ValueError, match=match):
            lm.distill_with_trl(student, teacher, tok, seqs, config(**change))


def test_gkd_collator_masks_prompt_and_padding(seqs):
    batch = lm.GKDCollator(prompt_len=K, max_new_tokens=NEW)([{"input_ids": s} for s in seqs[:3]])
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape[1] <= K + NEW
    assert (labels[:, :K] == -100).all()
    assert ((labels == -100) | (labels == ids)).all()
    assert (labels[batch["attention_mask"] == 0] == -100).all()
    assert torch.equal(batch["prompts"], ids[:, :K])


@pytest.mark.skipif(lm.trl_version() is None, reason="needs trl (the dev extras)")
def test_trl_gkdtrainer_trains_a_copy_and_leaves_the_student(tok, seqs, teacher):
    student = tiny(tok.vocab_size, seed=2, n_embd=8)
    before = params(student)
    trained, history = lm.distill_with_trl(
        student, teacher, tok, seqs, config(steps=2, lmbda=1.0, divergence="reverse")
    )
    assert trained is not student
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    after = trained.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items())
    assert len(history["loss"]) == 2 and len(history["per_token_loss"]) >= 2
    assert all(math.isfinite(v) and v >= 0 for v in history["per_token_loss"])
    assert history["trl_version"] == lm.trl_version()
