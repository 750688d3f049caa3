"""Self-training helpers: token dropping, clean (noise-free) logits, the noisy-student set and one round."""

import dataclasses

import pytest
import torch

from kdhelpers.chapters.selftrain import (
    clean_logits,
    drop_tokens,
    noisy_student_round,
    noisy_student_set,
    unlabelled_pool,
)
from kdhelpers.models import BagOfEmbeddingsStudent
from kdhelpers.students import StudentConfig, make_student
from kdhelpers.teacher import TextSplit


def test_drop_tokens_exact_seeded_values():
    ids = [[101, 5, 6, 7, 8, 9, 102], [101, 4, 102]]
    out = drop_tokens(ids, p_drop=0.5, n_copies=2, special_ids=(101, 102), seed=0)
    # random.Random(0) draws 0.844, 0.758, 0.421, 0.259, 0.511 | 0.405, 0.784, 0.303, 0.477, 0.583 | 0.908 | 0.505
    assert out == [[101, 5, 6, 9, 102], [101, 6, 9, 102], [101, 4, 102], [101, 4, 102]]
    assert out == drop_tokens(ids, p_drop=0.5, n_copies=2, special_ids=[102, 101], seed=0)
    assert out != drop_tokens(ids, p_drop=0.5, n_copies=2, special_ids=(101, 102), seed=1)
    # the same draws, but with 6 declared special: it stays, and the draws move on to the next tokens
    assert drop_tokens(ids, p_drop=0.5, n_copies=1, special_ids=(101, 102, 6), seed=0)[0] == [
        101,
        5,
        6,
        7,
        102,
    ]


def test_drop_tokens_keeps_the_special_ids_it_is_given_padding_included():
    bert_special = [
        100,
        102,
        0,
        101,
        103,
    ]  # what bert-base-uncased's tokenizer.all_special_ids holds
    padded = [[101, 5, 6, 7, 8, 9, 102, 0, 0, 0], [101, 4, 103, 102, 0]]
    out = drop_tokens(padded, p_drop=0.9, n_copies=10, special_ids=bert_special, seed=0)
    for v in out[:10]:
        assert v[0] == 101 and v[-4:] == [102, 0, 0, 0] and 6 <= len(v) <= 10
    assert (
        out[10:] == [[101, 4, 103, 102, 0]] * 10
    )  # [MASK] and padding kept; 4 is the only ordinary token
    # undeclared, the padding id is an ordinary token and can be dropped: the argument is what protects it
    assert any(
        v.count(0) < 3 for v in drop_tokens(padded[:1], 0.9, 10, special_ids=(101, 102), seed=0)
    )


def test_drop_tokens_invariants():
    ids = [[101] + list(range(1000, 1200)) + [102], [101, 102], [7]]
    sp = (101, 102)
    assert drop_tokens(ids, p_drop=0.0, n_copies=3, special_ids=sp) == [
        x for x in ids for _ in range(3)
    ]
    assert drop_tokens(ids, p_drop=0.3, n_copies=0, special_ids=sp) == []
    out = drop_tokens(ids, p_drop=0.3, n_copies=4, special_ids=sp, seed=3)
    assert len(out) == 12
    long_rate = [1 - (len(v) - 2) / 200 for v in out[:4]]
    assert all(0.2 < r < 0.4 for r in long_rate)
    for v in out[:4]:  # an ordered subsequence with the special tokens in place
        assert v[0] == 101 and v[-1] == 102 and v[1:-1] == sorted(v[1:-1])
    assert out[4:8] == [[101, 102]] * 4  # nothing to drop
    almost_all = drop_tokens([[101, 5, 6, 102]], p_drop=0.999, n_copies=20, special_ids=sp, seed=0)
    assert all(len(v) == 3 and v[0] == 101 and v[-1] == 102 and v[1] in (5, 6) for v in almost_all)


def test_drop_tokens_bad_input():
    sp = (101, 102)
    with pytest.raises(ValueError, match="p_drop"):
        drop_tokens([[1, 2]], p_drop=1.0, special_ids=sp)
    with pytest.raises(ValueError, match="p_drop"):
        drop_tokens([[1, 2]], p_drop=-0.1, special_ids=sp)
    with pytest.raises(ValueError, match="n_copies"):
        drop_tokens([[1, 2]], n_copies=-1, special_ids=sp)
    with pytest.raises(ValueError, match="n_copies"):
        drop_tokens([[1, 2]], n_copies=1.5, special_ids=sp)
    with pytest.raises(TypeError, match="sequence of token-id lists"):
        drop_tokens("101 5 102", special_ids=sp)
    with pytest.raises(TypeError, match="list of token ids"):
        drop_tokens(["101 5 102"], special_ids=sp)
    with pytest.raises(TypeError, match="special_ids"):
        drop_tokens([[1, 2]])  # no default: the ids depend on the tokenizer
    with pytest.raises(TypeError, match="special_ids must be a sequence"):
        drop_tokens([[1, 2]], special_ids="101 102")
    with pytest.raises(TypeError, match="special_ids must be a sequence"):
        drop_tokens([[1, 2]], special_ids=torch.tensor([101, 102]))
    with pytest.raises(TypeError, match="special_ids must hold ints"):
        drop_tokens([[1, 2]], special_ids=[101, 102.0])


def tiny_model(seed=0, dropout=0.5):
    torch.manual_seed(seed)
    return BagOfEmbeddingsStudent(40, embed_dim=8, hidden=8, dropout=dropout)


def tiny_split(n=24, seed=0, labelled=True):
    g = torch.Generator().manual_seed(seed)
    ids, gold = [], []
    for _ in range(n):
        body = torch.randint(
            3, 40, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g
        ).tolist()
        ids.append([1] + body + [2])
        gold.append(int(sum(t < 20 for t in body) > len(body) / 2))
    labels = torch.tensor(gold) if labelled else torch.full((n,), -1)
    return TextSplit([f"x:{i}" for i in range(n)], ["" for _ in range(n)], ids, labels)


def test_clean_logits_are_eval_mode_and_restore_training():
    model = tiny_model()
    split = tiny_split()
    model.train()
    first = clean_logits(model, split)
    assert model.training, "the model's mode must be restored"
    again = clean_logits(model, split.input_ids, batch_size=5)
    torch.testing.assert_close(first, again)
    reference = torch.cat([model.eval()(torch.tensor([x])) for x in split.input_ids]).detach()
    torch.testing.assert_close(first, reference, rtol=1e-5, atol=1e-6)
    assert not first.is_inference() and first.shape == (len(split), 2)
    with pytest.raises(TypeError, match="nn.Module"):
        clean_logits("model", split)
    with pytest.raises(ValueError, match="no examples"):
        clean_logits(model, [])


def test_noisy_student_set_pairs_each_copy_with_its_clean_logits():
    ids = [[101, 5, 6, 7, 102], [101, 8, 9, 102], [101, 4, 102]]
    logits = torch.tensor([[1.0, -1.0], [0.0, 2.0], [3.0, 0.5]])
    sp = (101, 102)
    data = noisy_student_set(ids, logits, n_copies=2, p_drop=0.5, special_ids=sp, seed=0)
    assert len(data) == 3 + 6
    assert data.input_ids[:3] == ids
    assert data.input_ids[3:] == drop_tokens(ids, 0.5, 2, special_ids=sp, seed=0)
    torch.testing.assert_close(data.teacher_logits, logits[[0, 1, 2, 0, 0, 1, 1, 2, 2]])
    assert (data.labels == -1).all(), "the target domain's labels must never reach training"
    only_noisy = noisy_student_set(ids, logits, n_copies=1, keep_clean=False, special_ids=sp)
    assert len(only_noisy) == 3
    with pytest.raises(ValueError, match="rows"):
        noisy_student_set(ids, logits[:2], special_ids=sp)
    with pytest.raises(ValueError, match="2-D"):
        noisy_student_set(ids, logits[:, 0], special_ids=sp)
    with pytest.raises(ValueError, match="no rows"):
        noisy_student_set(ids, logits, n_copies=0, keep_clean=False, special_ids=sp)
    with pytest.raises(TypeError, match="special_ids"):
        noisy_student_set(ids, logits)
    # the special ids reach the copies: with 5 declared special, every copy of the first text keeps it
    kept = noisy_student_set(ids, logits, n_copies=8, p_drop=0.9, special_ids=(101, 102, 5), seed=0)
    assert all(v[:2] == [101, 5] for v in kept.input_ids[3:11])


def test_noisy_student_round_is_seeded_learns_the_teacher_and_ignores_pool_labels():
    pool, val = tiny_split(64, seed=1), tiny_split(32, seed=2)
    share_low = torch.tensor([sum(t < 20 for t in x[1:-1]) / (len(x) - 2) for x in pool.input_ids])
    logits = torch.stack(
        [torch.zeros(64), 6 * (share_low - 0.5)], 1
    )  # a teacher that follows the labelling rule
    config = StudentConfig(epochs=8, lr=2e-2, seed=0)
    kwargs = dict(temperature=2.0, n_copies=2, p_drop=0.2, config=config, special_ids=(1, 2))

    def new():
        return make_student("bag", 40, seed=0, embed_dim=8, hidden=16)

    s1, h1 = noisy_student_round(logits, pool, new, val, "cpu", **kwargs)
    s2, _ = noisy_student_round(logits, pool, new, val, "cpu", **kwargs)
    for (k, a), b in zip(s1.state_dict().items(), s2.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{k} differs between identical seeded rounds"
    assert h1["rows"] == 64 * 3 and 1 <= len(h1["train_loss"]) <= 8
    # the pool's gold labels are not used: flipping them changes nothing
    flipped = TextSplit(pool.ids, pool.texts, pool.input_ids, 1 - pool.gold)
    s3, _ = noisy_student_round(logits, flipped, new, val, "cpu", **kwargs)
    for a, b in zip(s1.state_dict().values(), s3.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    teacher_says = logits.argmax(-1)
    before = (clean_logits(new(), pool).argmax(-1) == teacher_says).float().mean()
    after = (clean_logits(s1, pool).argmax(-1) == teacher_says).float().mean()
    assert before < 0.5 and after >= 0.7, (
        f"agreement with the teacher: {before:.2f} untrained, {after:.2f} trained"
    )


def test_noisy_student_round_bad_input():
    pool, val = tiny_split(8), tiny_split(8, seed=1)
    logits = torch.zeros(8, 2)
    with pytest.raises(TypeError, match="TextSplit"):
        noisy_student_round(logits, pool.input_ids, tiny_model, val, "cpu", special_ids=(1, 2))
    with pytest.raises(TypeError, match="nn.Module"):
        noisy_student_round(logits, pool, lambda: None, val, "cpu", special_ids=(1, 2))
    with pytest.raises(ValueError, match="rows"):
        noisy_student_round(logits[:3], pool, tiny_model, val, "cpu", special_ids=(1, 2))
    with pytest.raises(TypeError, match="special_ids"):
        noisy_student_round(logits, pool, tiny_model, val, "cpu")


def test_unlabelled_pool_hides_every_label_and_keeps_order():
    a, b = tiny_split(5, seed=0), tiny_split(3, seed=1)
    b = TextSplit([f"y:{i}" for i in range(3)], b.texts, b.input_ids, b.gold)
    pool = unlabelled_pool(a, b)
    assert pool.ids == a.ids + b.ids and pool.input_ids == a.input_ids + b.input_ids
    assert pool.gold.tolist() == [-1] * 8 and a.gold.ge(0).all(), (
        "the source splits keep their labels"
    )
    with pytest.raises(ValueError, match="share example ids"):
        unlabelled_pool(a, a)
    with pytest.raises(ValueError, match="at least one"):
        unlabelled_pool()
    with pytest.raises(TypeError, match="TextSplit"):
        unlabelled_pool(a.input_ids)


def test_soft_target_recipe_trains_what_noisy_student_round_trains():
    from kdhelpers.chapters.selftrain import SoftTargetRecipe

    pool, val = tiny_split(48, seed=1), tiny_split(16, seed=2)
    logits = torch.randn(48, 2, generator=torch.Generator().manual_seed(3))
    config = StudentConfig(epochs=2, lr=2e-2, seed=99)  # the recipe's seed argument wins
    table = torch.randn(40, 64, generator=torch.Generator().manual_seed(4))
    recipe = SoftTargetRecipe(
        kind="bag", vocab_size=40, embeddings=table, temperature=3.0, n_copies=1, p_drop=0.2,
        training=config, special_ids=[2, 1],
    )  # fmt: skip
    assert recipe.special_ids == (2, 1)
    from_table = recipe.new_student(5).embedding.weight
    assert torch.equal(from_table, make_student("bag", 40, table, seed=5).embedding.weight)
    assert not torch.equal(from_table, make_student("bag", 40, None, seed=5).embedding.weight)
    got, hist = recipe.train(pool, logits, val, "cpu", seed=5)
    ref, _ = noisy_student_round(
        logits, pool, lambda: make_student("bag", 40, table, seed=5), val, "cpu",
        temperature=3.0, n_copies=1, p_drop=0.2, config=config.replace(seed=5), special_ids=(2, 1),
    )  # fmt: skip
    for (k, a), b in zip(got.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{k} differs from noisy_student_round's student"
    assert hist["rows"] == 96
    other, _ = dataclasses.replace(recipe, p_drop=0.0).train(pool, logits, val, "cpu", seed=5)
    assert not all(
        torch.equal(a, b)
        for a, b in zip(got.state_dict().values(), other.state_dict().values(), strict=True)
    ), "p_drop should change the student"
    other_t, _ = dataclasses.replace(recipe, temperature=1.0).train(
        pool, logits, val, "cpu", seed=5
    )
    assert not all(
        torch.equal(a, b)
        for a, b in zip(got.state_dict().values(), other_t.state_dict().values(), strict=True)
    ), "the temperature should change the student"
    for bad, match in ((dict(kind="gpt"), "kind"), (dict(p_drop=1.5), "p_drop"),
                       (dict(special_ids="ab"), "special_ids"), (dict(temperature=0.0), "temperature"),
                       (dict(embeddings=table[:30]), "embeddings"),
                       (dict(kind="tiny-bert"), "embeddings")):  # fmt: skip
        with pytest.raises((TypeError, ValueError), match=match):
            dataclasses.replace(recipe, **bad)


def test_soft_target_recipe_for_profile_gives_each_profile_its_student():
    from kdhelpers.chapters.selftrain import SoftTargetRecipe
    from kdhelpers.profiles import resolve_profile

    table = torch.randn(40, 64, generator=torch.Generator().manual_seed(4))
    want = {  # what chapter 07 and its solutions wrote out before the recipe held it
        "quick": ("bag", 3, 1e-2, 1, 0.1),
        "standard": ("cnn", 10, 1e-3, 1, 0.1),
        "full": ("cnn", 10, 1e-3, 2, 0.1),
    }
    got = {}
    for profile in ("quick", "standard", "full", "auto"):
        r = SoftTargetRecipe.for_profile(profile, 40, table, 3.0, [2, 1])
        got[profile] = (r.kind, r.training.epochs, r.training.lr, r.n_copies, r.p_drop)
        assert (r.temperature, r.special_ids, r.vocab_size) == (3.0, (2, 1), 40)
        assert r.embeddings is table
    assert got == {**want, "auto": want[resolve_profile("auto")]}
    with pytest.raises(ValueError, match="PROFILE"):
        SoftTargetRecipe.for_profile("fast", 40, table, 3.0, [2, 1])
