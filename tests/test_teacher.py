"""The shared teacher recipe: train once, reload from its checkpoint, recompute on any change."""

import dataclasses
from dataclasses import replace

import pytest
import torch

from kdhelpers.data import load_sentiment
from kdhelpers.models import load_teacher
from kdhelpers.teacher import (
    PROFILE_SETTINGS,
    CourseSettings,
    _teacher_name,
    course_data,
    course_settings,
    course_teacher,
    load_or_train_teacher,
    split_accuracy,
    teacher_logits,
    tokenize_splits,
)


@pytest.fixture(scope="module")
def splits():
    ds = load_sentiment("movies", seed=0, n_train=24, n_validation=16, n_test=16)
    ds["unlabeled"] = ds["unlabeled"].select(range(20))
    _, tok = load_teacher()
    return tokenize_splits(ds, tok, max_length=24)


SETTINGS = CourseSettings(
    domain="movies",
    seed=0,
    n_train=24,
    pooling="mean",
    max_length=24,
    epochs=1,
    lr=1e-4,
    batch_size=8,
)


class _Ids:
    """A stand-in split: only its example ids matter for the checkpoint name."""

    def __init__(self, ids):
        self.ids = ids


def test_teacher_names_are_stable_hashes_of_the_teacher_keys():
    """Pinned names: a change to TEACHER_KEYS or to their values renames (and so retrains) the teacher.
    (The length-bucketed recipe and teacher_seed renamed the dict-era checkpoints on purpose.)"""
    fake = {"train": _Ids(["a", "b"]), "validation": _Ids(["c"])}
    names = [_teacher_name(course_settings(p, 0), fake) for p in ("quick", "standard", "full")]
    assert names == [
        "teacher-movies-99eb8833a399",
        "teacher-movies-6cc6345e8759",
        "teacher-movies-edfd5f1d190a",
    ]
    name = "teacher-movies-7020ae6c9d9d"
    assert _teacher_name(SETTINGS, fake) == name
    # a field outside TEACHER_KEYS leaves the name alone, one inside changes it
    assert _teacher_name(replace(SETTINGS, n_test=5), fake) == name
    assert _teacher_name(replace(SETTINGS, lr=2e-4), fake) != name
    assert _teacher_name(replace(SETTINGS, bucket=False), fake) != name
    # teacher_seed=None means "the data seed": the same teacher as naming that seed
    assert _teacher_name(replace(SETTINGS, teacher_seed=0), fake) == name
    assert _teacher_name(replace(SETTINGS, teacher_seed=1), fake) != name
    assert replace(SETTINGS, teacher_seed=1).teacher_key()["seed"] == 0


def test_teacher_seed_and_bucket_are_checked():
    with pytest.raises(TypeError, match="teacher_seed"):
        SETTINGS.replace(teacher_seed=1.0)
    with pytest.raises(ValueError, match="teacher_seed"):
        SETTINGS.replace(teacher_seed=-1)
    with pytest.raises(TypeError, match="bucket"):
        SETTINGS.replace(bucket=1)
    assert SETTINGS.training_seed == 0 and SETTINGS.replace(teacher_seed=4).training_seed == 4


def test_course_settings_are_frozen_checked_and_varied_with_replace():
    quick = course_settings("quick", seed=3, domain="books")
    assert (quick.seed, quick.domain, quick.n_train) == (
        3,
        "books",
        PROFILE_SETTINGS["quick"].n_train,
    )
    assert PROFILE_SETTINGS["quick"].seed == 0  # the shared table is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.n_train = 5  # type: ignore[misc]
    assert replace(quick, n_train=40) == quick.replace(n_train=40) != quick
    with pytest.raises(ValueError, match="pooling"):
        replace(quick, pooling="max")
    with pytest.raises(ValueError, match="n_train"):
        replace(quick, n_train=0)
    with pytest.raises(TypeError, match="lr"):
        replace(quick, lr="1e-4")


def test_tokenized_splits_keep_ids_and_hide_nothing_by_accident(splits):
    assert set(splits) == {"train", "unlabeled", "validation", "test"}
    unl = splits["unlabeled"].examples(with_labels=False)
    assert (unl.labels == -1).all() and len(unl) == 20
    assert all(len(ids) <= 24 for ids in splits["train"].input_ids)


def test_teacher_is_trained_once_then_reloaded(splits, tmp_path):
    torch.manual_seed(0)
    first, info = load_or_train_teacher(SETTINGS, splits, "cpu", folder=tmp_path)
    assert info["trained_now"] and (tmp_path / f"{info['checkpoint']}.safetensors").exists()
    second, info2 = load_or_train_teacher(SETTINGS, splits, "cpu", folder=tmp_path)
    assert not info2["trained_now"] and info2["checkpoint"] == info["checkpoint"]
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    acc = split_accuracy(second, splits["test"], "cpu")
    assert acc == split_accuracy(first, splits["test"], "cpu")
    # other settings, other checkpoint
    _, info3 = load_or_train_teacher(replace(SETTINGS, lr=2e-4), splits, "cpu", folder=tmp_path)
    assert info3["trained_now"] and info3["checkpoint"] != info["checkpoint"]
    # a damaged checkpoint is retrained, not trusted
    weights = tmp_path / f"{info['checkpoint']}.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _, info4 = load_or_train_teacher(SETTINGS, splits, "cpu", folder=tmp_path)
    assert info4["trained_now"]
    # the cached logits come back identical
    logits = teacher_logits(second, splits["unlabeled"], "cpu", folder=tmp_path)
    assert logits.shape == (20, 2)
    torch.testing.assert_close(
        teacher_logits(second, splits["unlabeled"], "cpu", folder=tmp_path), logits
    )
    with pytest.raises(TypeError, match="settings must be CourseSettings"):
        load_or_train_teacher({"domain": "movies"}, splits, "cpu", folder=tmp_path)


def test_transfer_set_keeps_train_labels_and_hides_the_rest():
    from kdhelpers.teacher import TextSplit
    from kdhelpers.transfer import transfer_set

    def split(prefix, n, label):
        return TextSplit(
            [f"{prefix}{i}" for i in range(n)],
            ["t"] * n,
            [[101, 5 + i, 6, 102] for i in range(n)],
            torch.full((n,), label, dtype=torch.long),
        )

    splits = {"train": split("a", 3, 1), "unlabeled": split("u", 2, 0)}
    transfer, labels = transfer_set(splits, 2, mask_id=103, seed=0)
    assert len(transfer) == 5 * 3 and transfer.ids[:5] == ["a0", "a1", "a2", "u0", "u1"]
    assert labels.tolist() == [1, 1, 1] + [-1] * 12
    plain, plain_labels = transfer_set(splits, 0, mask_id=103)
    assert len(plain) == 5 and plain_labels.tolist() == [1, 1, 1, -1, -1]
    with pytest.raises(ValueError, match="aug_copies"):
        transfer_set(splits, -1, mask_id=103)


def test_a_checkpoint_is_reused_only_when_it_verifies_and_its_settings_match(
    splits, tmp_path, monkeypatch
):
    import json

    from kdhelpers import teacher as recipes

    calls = []
    monkeypatch.setattr(
        recipes, "fit", lambda *a, **k: calls.append(k["config"].lr) or {"epochs": 0}
    )
    _, first = load_or_train_teacher(SETTINGS, splits, "cpu", folder=tmp_path)
    assert first["trained_now"] and "no checkpoint" in first["reason"]
    _, again = load_or_train_teacher(SETTINGS, splits, "cpu", folder=tmp_path)
    assert not again["trained_now"] and "verified" in again["reason"]
    # a checkpoint of other settings copied to this one's name is not reused
    other = replace(SETTINGS, lr=2e-4)
    _, info = load_or_train_teacher(other, splits, "cpu", folder=tmp_path)
    for ext in ("safetensors", "json"):
        (tmp_path / f"{first['checkpoint']}.{ext}").write_bytes(
            (tmp_path / f"{info['checkpoint']}.{ext}").read_bytes()
        )
    _, copied = load_or_train_teacher(SETTINGS, splits, "cpu", folder=tmp_path)
    assert (
        copied["trained_now"] and "other settings" in copied["reason"] and "lr" in copied["reason"]
    )
    assert calls == [1e-4, 2e-4, 1e-4]
    # a checkpoint of the earlier format (no digest) is retrained, with the reason
    meta = tmp_path / f"{first['checkpoint']}.json"
    record = json.loads(meta.read_text())
    del record["kd_integrity"]
    meta.write_text(json.dumps(record))
    _, old = load_or_train_teacher(SETTINGS, splits, "cpu", folder=tmp_path)
    assert old["trained_now"] and "no digest" in old["reason"]
    # same settings, other training examples: not reused
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "data_sha256": "0" * 64}))
    _, moved = load_or_train_teacher(SETTINGS, splits, "cpu", folder=tmp_path)
    assert moved["trained_now"] and "other train/validation examples" in moved["reason"]


def test_impossible_checkpoint_folder_names_kd_checkpoint_dir(splits, tmp_path, monkeypatch):
    from kdhelpers.paths import UnwritableFolderError

    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("KD_CHECKPOINT_DIR", str(tmp_path / "file" / "checkpoints"))
    with pytest.raises(UnwritableFolderError, match="KD_CHECKPOINT_DIR"):
        load_or_train_teacher(SETTINGS, splits, "cpu")


def test_course_teacher_is_the_four_steps_every_chapter_used_to_repeat(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CHECKPOINT_DIR", str(tmp_path))
    settings = replace(SETTINGS, n_validation=16, n_test=16, n_unlabeled=20)
    torch.manual_seed(0)
    teacher, tokenizer, splits, dataset, info = course_teacher(settings, "cpu")
    assert info["trained_now"] and (tmp_path / f"{info['checkpoint']}.safetensors").exists()
    assert len(dataset["unlabeled"]) == 20 and set(splits) == set(dataset)
    assert splits["train"].ids == list(dataset["train"]["id"])
    # by hand: the same data, tokens and (reloaded) teacher
    by_hand = tokenize_splits(course_data(settings), tokenizer, max_length=settings.max_length)
    assert by_hand["test"].input_ids == splits["test"].input_ids
    again, _, _, _, info2 = course_teacher(settings, "cpu")
    assert not info2["trained_now"]
    for a, b in zip(teacher.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_teacher_training_is_seeded_by_its_settings_not_the_callers_rng(splits, tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, _ = load_or_train_teacher(SETTINGS, splits, "cpu", folder=tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), before), "the caller's RNG was changed"
    torch.manual_seed(999)  # another caller state: the same teacher
    again, _ = load_or_train_teacher(SETTINGS, splits, "cpu", folder=tmp_path / "b")
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other, info = load_or_train_teacher(
        SETTINGS.replace(teacher_seed=1), splits, "cpu", folder=tmp_path / "a"
    )
    assert info["trained_now"] and info["settings"]["teacher_seed"] == 1
    assert not torch.equal(first.classifier.weight, other.classifier.weight)


def test_student_config_checks_and_train_student_is_repeatable(splits):
    from kdhelpers.students import StudentConfig, make_student, train_student
    from kdhelpers.train import cross_entropy_loss

    with pytest.raises(ValueError, match="epochs"):
        StudentConfig(epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        StudentConfig(batch_size=0)
    with pytest.raises(TypeError, match="bucket"):
        StudentConfig(bucket=None)
    with pytest.raises(TypeError, match="seed"):
        StudentConfig(seed=0.5)
    config = StudentConfig(epochs=2, lr=1e-2, batch_size=8, seed=3)
    assert config.train_config().seed == 3 and config.replace(lr=0.1).lr == 0.1
    vocab = 30522
    runs = []
    for _ in range(2):
        student = make_student("bag", vocab, seed=0)
        hist = train_student(
            student,
            splits["train"].examples(),
            splits["validation"],
            cross_entropy_loss,
            "cpu",
            config,
        )
        runs.append((hist["train_loss"], student.state_dict()))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1].values(), runs[1][1].values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="StudentConfig"):
        train_student(
            student, splits["train"].examples(), splits["validation"], cross_entropy_loss, "cpu", {}
        )


def test_seed_teachers_are_the_chapter_teacher_and_its_other_seeds(splits, tmp_path, monkeypatch):
    from kdhelpers.teacher import seed_teachers

    monkeypatch.setenv("KD_CHECKPOINT_DIR", str(tmp_path))
    by_seed = seed_teachers(SETTINGS, splits, "cpu", [0, 1])
    chapter, info = load_or_train_teacher(SETTINGS, splits, "cpu")
    assert not info["trained_now"], "seed 0 is the chapter's own teacher (teacher_seed None)"
    assert torch.equal(by_seed[0].classifier.weight, chapter.classifier.weight)
    assert not torch.equal(by_seed[1].classifier.weight, chapter.classifier.weight)
    with pytest.raises(ValueError, match="seeds"):
        seed_teachers(SETTINGS, splits, "cpu", [])


def test_text_split_select_keeps_rows_together(splits):
    part = splits["train"].select([5, 0, 3])
    assert part.ids == [splits["train"].ids[i] for i in (5, 0, 3)]
    assert part.input_ids[0] == splits["train"].input_ids[5]
    assert part.gold.tolist() == splits["train"].gold[[5, 0, 3]].tolist()
    with pytest.raises(ValueError, match="rows"):
        splits["train"].select([])
    with pytest.raises(ValueError, match="rows"):
        splits["train"].select([len(splits["train"])])
