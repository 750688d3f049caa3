"""Students, teacher loading, checkpoints and the training loop on tiny configurations."""

import socket
import time

import pytest
import torch
import torch.nn.functional as F

from kdhelpers.batching import TextExamples, make_loader, pad_collate
from kdhelpers.checkpoints import load_checkpoint, save_checkpoint
from kdhelpers.models import (
    BagOfEmbeddingsStudent,
    count_parameters,
    distilbert_style_student,
    init_embeddings_from_teacher,
    load_teacher,
    logits_of,
    model_size_mb,
    tiny_bert_student,
)
from kdhelpers.train import (
    KeepBest,
    OptimiserStep,
    TrainConfig,
    cross_entropy_loss,
    evaluate,
    fit,
    make_kd_loss,
    warmup_linear_schedule,
)


@pytest.fixture(scope="module")
def teacher():
    return load_teacher()


def toy_examples(n=64, vocab=50, seed=0, with_teacher=False):
    """Label = whether token 7 occurs: learnable by a bag of embeddings."""
    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for _ in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        seq = torch.randint(8, vocab, (length,), generator=g).tolist()
        y = int(torch.rand(1, generator=g) < 0.5)
        if y:
            seq[int(torch.randint(0, length, (1,), generator=g))] = 7
        ids.append([1] + seq + [2])
        labels.append(y)
    teacher_logits = None
    if with_teacher:
        teacher_logits = torch.tensor([[0.0, 3.0] if y else [3.0, 0.0] for y in labels])
    return TextExamples(ids, labels, teacher_logits)


def _block_network(monkeypatch) -> list:
    """Make every DNS look-up and socket connection fail at once; returns the list of attempts."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network blocked by the test")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_packaged_teacher_loads_with_the_network_blocked(monkeypatch):
    """No HF_HUB_OFFLINE here: a hub look-up would reach the blocked sockets and be recorded."""
    attempts = _block_network(monkeypatch)
    model, tok = load_teacher()  # loaded now, not by the module fixture (which ran with a network)
    assert count_parameters(model) == pytest.approx(22.7e6, rel=0.01)
    assert model.config.num_labels == 2 and model.config.hidden_size == 384
    batch = tok(["a fine film"], return_tensors="pt")
    assert logits_of(model(**batch)).shape == (1, 2)
    assert attempts == [], f"loading the packaged teacher tried the network: {attempts}"


def test_hub_name_fails_fast_and_clearly_offline(monkeypatch):
    attempts = _block_network(monkeypatch)
    monkeypatch.setenv(
        "HF_HUB_OFFLINE", "1"
    )  # declared offline: refused without touching the network
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"HF_HUB_OFFLINE is set.*load_teacher\(None\)"):
        load_teacher("bert-base-uncased")
    assert time.perf_counter() - start < 5 and attempts == []
    monkeypatch.delenv("HF_HUB_OFFLINE")  # not declared, but unreachable: the probe fails, fast
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"unreachable.*load_teacher\(None\)"):
        load_teacher("bert-base-uncased")
    assert time.perf_counter() - start < 5 and attempts


def test_bad_teacher_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_labels"):
        load_teacher(None, num_labels=1)
    with pytest.raises(ValueError, match="config.json"):
        load_teacher(tmp_path)
    with pytest.raises(TypeError, match="name_or_path"):
        load_teacher(42)


def test_bag_student_shapes_padding_and_vocab_check():
    torch.manual_seed(0)
    s = BagOfEmbeddingsStudent(vocab_size=20, embed_dim=8, hidden=16).eval()
    ids = torch.tensor([[1, 5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    out = s(ids, mask)
    assert out.shape == (1, 2)
    # padding never changes the prediction
    torch.testing.assert_close(out, s(torch.tensor([[1, 5, 6]]), torch.tensor([[1, 1, 1]])))
    with pytest.raises(ValueError, match="vocabulary"):
        s(torch.tensor([[25, 1]]))
    with pytest.raises(ValueError, match="embed_dim"):
        BagOfEmbeddingsStudent(20, embed_dim=0)


def test_student_sizes(teacher):
    model, tok = teacher
    bag = BagOfEmbeddingsStudent(tok.vocab_size, embed_dim=64, hidden=128)
    assert count_parameters(bag) == tok.vocab_size * 64 + 64 * 128 + 128 + 128 * 2 + 2
    bert = tiny_bert_student(tok.vocab_size, hidden=128, layers=2)
    assert count_parameters(bert) < count_parameters(model) / 4
    distil = distilbert_style_student(model)
    assert distil.config.num_hidden_layers == 3 and len(distil.bert.encoder.layer) == 3
    assert model.config.num_hidden_layers == 6  # the teacher is untouched
    torch.testing.assert_close(
        distil.bert.encoder.layer[0].output.dense.weight,
        model.bert.encoder.layer[1].output.dense.weight,
    )
    assert model_size_mb(bag) == pytest.approx(count_parameters(bag) * 4 / 1e6, rel=0.01)
    with pytest.raises(ValueError, match="heads"):
        tiny_bert_student(100, hidden=130, heads=4)


def test_embedding_init_from_teacher_keeps_geometry(teacher):
    model, tok = teacher
    bag = BagOfEmbeddingsStudent(tok.vocab_size, embed_dim=32)
    kept = init_embeddings_from_teacher(bag, model)
    assert 0.1 < kept < 1.0
    assert torch.all(bag.embedding.weight[0] == 0)
    with pytest.raises(ValueError, match="vocabulary"):
        init_embeddings_from_teacher(BagOfEmbeddingsStudent(100, embed_dim=8), model)


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    a = BagOfEmbeddingsStudent(30, embed_dim=4, hidden=8)
    save_checkpoint(a, tmp_path / "student", {"note": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.json", "student.safetensors"]
    b = BagOfEmbeddingsStudent(30, embed_dim=4, hidden=8)
    config = load_checkpoint(b, tmp_path / "student")
    assert config["note"] == "x" and config["model_class"] == "BagOfEmbeddingsStudent"
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(ValueError, match="BagOfEmbeddingsStudent"):
        load_checkpoint(torch.nn.Linear(2, 2), tmp_path / "student")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(b, tmp_path / "missing")


def test_pad_collate_and_loader_keep_teacher_logits_with_their_example():
    data = toy_examples(40, with_teacher=True)
    loader = make_loader(data, batch_size=7, shuffle=True, seed=3)
    seen = 0
    for batch in loader:
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        for row, idx in enumerate(batch["index"].tolist()):
            torch.testing.assert_close(batch["teacher_logits"][row], data.teacher_logits[idx])
            assert batch["labels"][row] == data.labels[idx]
            n = len(data.input_ids[idx])
            assert batch["attention_mask"][row].sum() == n
        seen += len(batch["index"])
    assert seen == 40
    b = pad_collate(
        [
            {"input_ids": [1, 2, 3], "labels": 0, "index": 0},
            {"input_ids": [1], "labels": 1, "index": 1},
        ],
        pad_id=0,
    )
    assert b["input_ids"].tolist() == [[1, 2, 3], [1, 0, 0]]


def test_text_examples_bad_input():
    with pytest.raises(ValueError, match="empty"):
        TextExamples([])
    with pytest.raises(ValueError, match="labels"):
        TextExamples([[1, 2]], labels=[0, 1])
    with pytest.raises(ValueError, match="teacher_logits"):
        TextExamples([[1, 2]], teacher_logits=torch.zeros(2, 2))


def test_fit_learns_the_toy_task_and_is_repeatable():
    def run():
        torch.manual_seed(0)
        model = BagOfEmbeddingsStudent(50, embed_dim=16, hidden=16, dropout=0.0)
        train = make_loader(toy_examples(256, seed=1), 32, shuffle=True, seed=0)
        val = make_loader(toy_examples(128, seed=2), 64)
        hist = fit(
            model, train, val, config=TrainConfig(epochs=20, lr=2e-2, patience=None), device="cpu"
        )
        return model, hist, val

    model, hist, val = run()
    assert hist["best_val_accuracy"] > 0.9
    assert evaluate(model, val, "cpu")["accuracy"] == pytest.approx(hist["best_val_accuracy"])
    _, hist2, _ = run()
    assert hist2["train_loss"] == hist["train_loss"]


def test_fit_with_kd_loss_on_partly_unlabelled_data(tmp_path):
    torch.manual_seed(0)
    data = toy_examples(200, seed=4, with_teacher=True)
    data.labels[100:] = -1  # half unlabelled: only the teacher speaks for them
    model = BagOfEmbeddingsStudent(50, embed_dim=16, hidden=16, dropout=0.0)
    hist = fit(
        model,
        make_loader(data, 32, shuffle=True),
        make_loader(toy_examples(100, seed=5), 50),
        make_kd_loss(alpha=0.3, temperature=2.0),
        TrainConfig(epochs=20, lr=2e-2),
        device="cpu",
        checkpoint=tmp_path / "best",
    )
    assert hist["best_val_accuracy"] > 0.9
    assert (tmp_path / "best.safetensors").exists()


def test_loss_functions_reject_bad_settings():
    with pytest.raises(ValueError, match="alpha"):
        make_kd_loss(alpha=2.0)
    with pytest.raises(ValueError, match="temperature"):
        make_kd_loss(temperature=0.0)
    kd = make_kd_loss()
    with pytest.raises(ValueError, match="teacher logits"):
        kd(torch.zeros(2, 2), {"labels": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="labelled"):
        cross_entropy_loss(torch.zeros(2, 2), {"labels": torch.tensor([-1, -1])})
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        fit(BagOfEmbeddingsStudent(50), make_loader(toy_examples(8), 4), None, config={"epochs": 1})


def test_warmup_schedule_shape():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_linear_schedule(opt, total_steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.125) and lrs == sorted(lrs[:2]) + sorted(
        lrs[2:], reverse=True
    )


def test_cnn_student_ignores_padding_and_handles_short_inputs(teacher):
    from kdhelpers.models import CNNStudent

    torch.manual_seed(0)
    cnn = CNNStudent(vocab_size=50, embed_dim=8, channels=4, widths=(2, 3)).eval()
    ids = torch.tensor([[1, 5, 6, 7, 2]])
    out = cnn(ids, torch.ones_like(ids))
    padded = torch.tensor([[1, 5, 6, 7, 2, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    torch.testing.assert_close(cnn(padded, mask), out)
    assert cnn(torch.tensor([[1]]), torch.tensor([[1]])).shape == (1, 2)
    with pytest.raises(ValueError, match="vocabulary"):
        cnn(torch.tensor([[60]]))
    with pytest.raises(ValueError, match="widths"):
        CNNStudent(50, widths=())
    model, tok = teacher
    big = CNNStudent(tok.vocab_size, embed_dim=16)
    assert 0 < init_embeddings_from_teacher(big, model) < 1


def test_without_dropout_zeroes_every_dropout_and_makes_train_mode_deterministic():
    from kdhelpers.models import BagOfEmbeddingsStudent, without_dropout

    torch.manual_seed(0)
    model = BagOfEmbeddingsStudent(20, embed_dim=8, hidden=8, dropout=0.5).train()
    ids = torch.tensor([[1, 2, 3, 0]])
    mask = (ids > 0).long()
    assert not torch.equal(
        model(input_ids=ids, attention_mask=mask), model(input_ids=ids, attention_mask=mask)
    )
    assert without_dropout(model) is model
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    torch.testing.assert_close(
        model(input_ids=ids, attention_mask=mask), model(input_ids=ids, attention_mask=mask)
    )
    with pytest.raises(TypeError, match="nn.Module"):
        without_dropout("not a model")


def _linear_step(**kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return model, OptimiserStep(opt, parameters=tuple(model.parameters()), **kw)


def _loss(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (model(torch.randn(8, 4, generator=g)) ** 2).sum() * 10


def test_optimiser_step_clips_after_unscaling_and_accumulates():
    # reference by hand: gradient, clipped to norm 1, one SGD step
    ref, _ = _linear_step()
    grads = torch.autograd.grad(_loss(ref), list(ref.parameters()))
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert norm > 1  # so clipping matters
    want = [
        p.detach() - 0.5 * g / (norm + 1e-6) for p, g in zip(ref.parameters(), grads, strict=True)
    ]
    for kw in ({}, {"scaler": torch.amp.GradScaler("cpu", init_scale=2.0**10)}):
        model, step = _linear_step(max_grad_norm=1.0, **kw)
        step(
            _loss(model)
        )  # under the scaler: unscaled before clipping, else the clip would see 1024x
        for p, w in zip(model.parameters(), want, strict=True):
            torch.testing.assert_close(p.detach(), w)
    # two backward calls then one update = one step on the summed loss
    a, step_a = _linear_step()
    step_a.zero_grad()
    step_a.backward(_loss(a, 1))
    step_a.backward(_loss(a, 2))
    step_a.update()
    b, step_b = _linear_step()
    step_b(_loss(b, 1) + _loss(b, 2))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    # Accelerate-style: backward and clipping are the callables given
    calls = []
    c, step_c = _linear_step(
        max_grad_norm=2.0,
        backward_fn=lambda loss: calls.append("backward") or loss.backward(),
        clip_fn=lambda params, norm: calls.append(("clip", len(params), norm)),
    )
    step_c(_loss(c))
    assert calls == ["backward", ("clip", 2, 2.0)]
    with pytest.raises(ValueError, match="max_grad_norm"):
        _linear_step(max_grad_norm=0.0)


def test_keep_best_keeps_a_copy_of_the_best_weights():
    model = torch.nn.Linear(2, 1)
    best = KeepBest(higher_is_better=False)
    assert not best.restore(model)  # nothing kept yet: the model is left alone
    assert best.offer(model, 3.0, at=1)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on in place: the kept copy must not follow
    assert not best.offer(model, 3.0, at=2)  # ties do not replace the best
    assert not best.offer(model, 4.0, at=3)
    assert (best.value, best.at) == (3.0, 1)
    assert best.restore(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())


def test_kd_loss_ce_weighting_matches_the_formula_row_by_row():
    """Independent reference: per-row losses alpha*CE_i*[labelled] + (1-alpha)*T^2*KL_i, in float64."""
    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    labels = torch.tensor([1, -1, -1, 0, -1, -1, -1, -1])  # 2 of 8 rows labelled
    alpha, T = 0.4, 3.0
    z, t = logits.double(), teacher.double()
    kl = (t.div(T).softmax(-1) * (t.div(T).log_softmax(-1) - z.div(T).log_softmax(-1))).sum(-1)
    ce = F.cross_entropy(z, labels.clamp(min=0), reduction="none") * (labels >= 0)
    batch = {"labels": labels, "teacher_logits": teacher}
    per_row = alpha * ce + (1 - alpha) * T**2 * kl
    got_batch = make_kd_loss(alpha, T, ce_weighting="batch")(logits, batch)
    torch.testing.assert_close(got_batch.double(), per_row.mean(), rtol=1e-5, atol=1e-6)
    got_lab = make_kd_loss(alpha, T)(
        logits, batch
    )  # "labelled": CE averaged over the 2 labelled rows
    ref_lab = alpha * ce.sum() / 2 + (1 - alpha) * T**2 * kl.mean()
    torch.testing.assert_close(got_lab.double(), ref_lab, rtol=1e-5, atol=1e-6)
    # every row labelled: the two weightings agree
    full = {"labels": torch.tensor([1, 0, 0, 1, 1, 0, 1, 0]), "teacher_logits": teacher}
    torch.testing.assert_close(
        make_kd_loss(alpha, T, "batch")(logits, full), make_kd_loss(alpha, T)(logits, full)
    )
    with pytest.raises(ValueError, match="ce_weighting"):
        make_kd_loss(alpha, T, "rows")


def test_adamw_with_warmup_uses_the_fused_kernel_with_the_same_update():
    from kdhelpers.train import adamw_with_warmup

    torch.manual_seed(0)
    a = torch.nn.Linear(8, 3)
    b = torch.nn.Linear(8, 3)
    b.load_state_dict(a.state_dict())
    fused, _ = adamw_with_warmup(a.parameters(), 1e-2, 0.01, total_steps=10, warmup_ratio=0.0)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.01)  # the reference
    x = torch.randn(16, 8)
    for _ in range(5):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
