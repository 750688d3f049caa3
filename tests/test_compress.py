"""int8 dynamic quantization helpers: a copy close to the float model, original untouched, honest counts and sizes."""

import copy

import pytest
import torch
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

from kdhelpers.chapters.compress import (
    QuantizedEmbedding,
    accuracy_report,
    count_weights,
    eval_device,
    is_quantized,
    prediction_changes,
    quantize_dynamic_int8,
)
from kdhelpers.models import (
    BagOfEmbeddingsStudent,
    CNNStudent,
    count_parameters,
    model_size_mb,
    tiny_bert_student,
)


def mlp(seed=0, width=32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 3))


def token_batch(vocab=50, n=6, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    ids[0, 6:] = 0  # one padded row
    return ids, (ids != 0).long()


def test_quantized_mlp_is_a_close_copy_and_the_original_is_untouched():
    model = mlp().train()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    q = quantize_dynamic_int8(model)
    assert isinstance(q[0], nnqd.Linear) and isinstance(q[2], nnqd.Linear) and not q.training
    # the float model: same class of layers, same weights, same mode
    assert type(model[0]) is nn.Linear and model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    with torch.no_grad():
        ref = model.eval()(x)
        out = q(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=0.02, rtol=0.0)
    assert not torch.equal(out, ref)  # it is really int8 arithmetic, not a float copy
    assert is_quantized(q) and not is_quantized(model)


def test_int8_weights_follow_the_symmetric_per_tensor_rule():
    """Hand computation: scale = max|w| / 127.5, every weight within half a step of its float value."""
    model = mlp(seed=3)
    q = quantize_dynamic_int8(model)
    for fl, qu in ((model[0], q[0]), (model[2], q[2])):
        w, qw = fl.weight.detach(), qu.weight()
        assert qw.dtype == torch.qint8 and qw.q_zero_point() == 0
        scale = qw.q_scale()
        assert scale == pytest.approx(float(w.abs().max()) / 127.5, rel=1e-6)
        assert (qw.dequantize() - w).abs().max() <= scale / 2 + 1e-7
        torch.testing.assert_close(qu.bias(), fl.bias.detach())  # biases stay float


def test_tiny_bert_quantized_logits_counts_and_size():
    torch.manual_seed(0)
    model = tiny_bert_student(
        50, hidden=32, layers=2, heads=2, intermediate=64, max_positions=16
    ).eval()
    ids, mask = token_batch()
    q = quantize_dynamic_int8(model)
    with torch.no_grad():
        ref, out = (
            model(input_ids=ids, attention_mask=mask).logits,
            q(input_ids=ids, attention_mask=mask).logits,
        )
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.0)
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert sum(isinstance(m, nnqd.Linear) for m in q.modules()) == n_linear == 2 * 6 + 2
    assert count_weights(q) == count_parameters(model) == count_weights(model)
    assert count_parameters(q) < count_parameters(model)  # why count_weights exists
    assert model_size_mb(q) < model_size_mb(model)
    # 8-bit embedding tables too: BERT's position ids are a non-contiguous slice, the lookup must accept them
    qe = quantize_dynamic_int8(model, embeddings=True)
    assert isinstance(qe.bert.embeddings.word_embeddings, QuantizedEmbedding)
    assert isinstance(qe.bert.embeddings.position_embeddings, QuantizedEmbedding)
    with torch.no_grad():
        torch.testing.assert_close(
            qe(input_ids=ids, attention_mask=mask).logits, ref, atol=0.1, rtol=0.0
        )
    assert model_size_mb(qe) < model_size_mb(q) and count_weights(qe) == count_parameters(model)


def test_linear_heavy_model_shrinks_about_fourfold_on_disk():
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    ratio = model_size_mb(quantize_dynamic_int8(model)) / model_size_mb(model)
    assert 0.24 < ratio < 0.3  # int8 weights; float biases, scales and headers add a little


def test_embedding_tables_are_quantized_only_when_asked():
    torch.manual_seed(0)
    cnn = CNNStudent(50, embed_dim=16, channels=8).eval()
    ids, mask = token_batch()
    plain = quantize_dynamic_int8(cnn)
    assert isinstance(plain.embedding, nn.Embedding) and isinstance(plain.head, nnqd.Linear)
    both = quantize_dynamic_int8(cnn, embeddings=True)
    assert isinstance(both.embedding, nnq.Embedding)
    with torch.no_grad():
        torch.testing.assert_close(both(ids, mask), cnn(ids, mask), atol=0.05, rtol=0.0)
    assert model_size_mb(both) < model_size_mb(plain)
    assert count_weights(both) == count_parameters(cnn)
    # the bag student: its MLP can be quantized, its EmbeddingBag (padding_idx) cannot be without changing it
    bag = BagOfEmbeddingsStudent(50, embed_dim=16, hidden=8).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            quantize_dynamic_int8(bag)(ids, mask), bag(ids, mask), atol=0.05, rtol=0.0
        )
    with pytest.raises(ValueError, match="padding_idx"):
        quantize_dynamic_int8(bag, embeddings=True)


def test_bad_inputs():
    with pytest.raises(TypeError, match="nn.Module"):
        quantize_dynamic_int8("model")
    with pytest.raises(TypeError, match="embeddings"):
        quantize_dynamic_int8(mlp(), embeddings="yes")
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_dynamic_int8(nn.Sequential(nn.Conv1d(4, 4, 3)))
    with pytest.raises(ValueError, match="already quantized"):
        quantize_dynamic_int8(quantize_dynamic_int8(mlp()))
    with pytest.raises(TypeError):
        is_quantized(None)
    with pytest.raises(TypeError):
        count_weights([1, 2])


def test_quantized_models_are_evaluated_on_the_cpu():
    q = quantize_dynamic_int8(mlp())
    assert eval_device(q, "cuda") == torch.device("cpu")
    assert eval_device(mlp(), "cuda") == torch.device("cuda")


def test_accuracy_report_float_and_int8():
    torch.manual_seed(0)
    model = tiny_bert_student(
        50, hidden=32, layers=1, heads=2, intermediate=64, max_positions=16
    ).train()
    g = torch.Generator().manual_seed(2)
    input_ids = [
        torch.randint(1, 50, (int(n),), generator=g).tolist()
        for n in torch.randint(3, 12, (20,), generator=g)
    ]
    labels = torch.randint(0, 2, (20,), generator=g)
    row, logits = accuracy_report(model, "tiny", input_ids, labels, "cpu")
    assert model.training  # mode restored
    assert set(row) == {"name", "accuracy", "params_m", "size_mb", "int8"}
    assert logits.shape == (20, 2) and row["int8"] is False
    assert row["accuracy"] == pytest.approx(float((logits.argmax(-1) == labels).float().mean()))
    with torch.no_grad():  # logits in input order, as a plain forward pass gives them
        one = model.eval()(input_ids=torch.tensor([input_ids[5]])).logits
    model.train()
    torch.testing.assert_close(logits[5:6], one, atol=1e-5, rtol=1e-5)
    qrow, _ = accuracy_report(quantize_dynamic_int8(model), "tiny int8", input_ids, labels, "cpu")
    assert (
        qrow["int8"] is True
        and qrow["params_m"] == row["params_m"]
        and qrow["size_mb"] < row["size_mb"]
    )
    with pytest.raises(ValueError, match="labels"):
        accuracy_report(model, "tiny", input_ids, labels[:5], "cpu")
    with pytest.raises(ValueError, match="empty"):
        accuracy_report(model, "tiny", [], labels[:0], "cpu")


def test_prediction_changes_counts_by_hand():
    labels = torch.tensor([0, 1, 1, 0, 1])
    ref = torch.tensor(
        [[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 3.0]]
    )  # right, right, wrong, right, right
    new = torch.tensor(
        [[2.0, 0.5], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 2.0]]
    )  # right, right, right, wrong, right
    out = prediction_changes(ref, new, labels)
    assert out == {
        "reference_accuracy": 0.8,
        "accuracy": 0.8,
        "agreement": 0.6,
        "fixed": 1,
        "broken": 1,
        "n": 5,
        "z": 0.0,
        "max_abs_logit_diff": 1.0,
    }
    # McNemar's z by hand: 3 fixed, 1 broken -> (3 - 1) / sqrt(4) = 1
    ref3 = torch.tensor([[0.0, 1.0]] * 3 + [[1.0, 0.0]] * 2)
    new3 = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0], [1.0, 0.0]])
    out3 = prediction_changes(ref3, new3, torch.zeros(5, dtype=torch.long))
    assert (out3["fixed"], out3["broken"], out3["z"], out3["agreement"]) == (3, 1, 1.0, 0.2)
    with pytest.raises(ValueError, match="shape"):
        prediction_changes(ref, new[:3], labels)
    with pytest.raises(ValueError):
        prediction_changes(ref, new, labels[:2])
    with pytest.raises(ValueError, match="logits"):
        prediction_changes(ref[0], new[0], labels)


# ---------------------------------------------------------------- per-channel, float head


def test_per_channel_int8_has_one_scale_per_output_row_and_keeps_the_head_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    q = quantize_dynamic_int8(model, per_channel=True, keep_float=("2",))
    assert isinstance(q[0], nnqd.Linear) and not isinstance(q[2], nnqd.Linear)
    assert isinstance(q[2], nn.Linear)  # the head stays float32, its weights untouched
    assert torch.equal(q[2].weight, model[2].weight)
    w = q[0].weight()
    assert w.qscheme() == torch.per_channel_affine and w.q_per_channel_scales().shape == (16,)
    # each row's scale is its own max |w| / 127 (symmetric int8), not the matrix's
    rows = model[0].weight.detach().abs().amax(dim=1) / 127.5
    torch.testing.assert_close(w.q_per_channel_scales().float(), rows, rtol=0.02, atol=1e-6)
    per_tensor = quantize_dynamic_int8(model)[0].weight()
    assert per_tensor.qscheme() == torch.per_tensor_affine
    with pytest.raises(ValueError, match="keep_float"):
        quantize_dynamic_int8(model, keep_float=("classifier",))
    with pytest.raises(TypeError, match="keep_float"):
        quantize_dynamic_int8(model, keep_float="2")


# ---------------------------------------------------------------- ONNX Runtime


def test_onnx_export_matches_pytorch_on_other_lengths_and_batches(tmp_path):
    from kdhelpers.chapters.compress import OnnxClassifier, export_onnx
    from kdhelpers.pseudo import predict_logits
    from kdhelpers.students import make_student

    for kind in ("cnn", "tiny-bert"):
        model = make_student(kind, 500, None, seed=0).eval()
        g = torch.Generator().manual_seed(1)
        ids = [torch.randint(1, 500, (int(n),), generator=g).tolist() for n in (2, 3, 7, 19, 40)]
        path = export_onnx(model, tmp_path / f"{kind}.onnx", ids[-2:], min_length=4)
        onnx_model = OnnxClassifier(path, threads=1, min_length=4)
        ours = predict_logits(model, ids, batch_size=2, device="cpu")  # padded batches
        theirs = predict_logits(onnx_model, ids, batch_size=2, device="cpu")
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
        assert model.training is False and next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="float model"):
        export_onnx(quantize_dynamic_int8(nn.Sequential(nn.Linear(4, 2))), tmp_path / "q.onnx", ids)


# ---------------------------------------------------------------- pruning


def test_magnitude_pruning_zeroes_the_smallest_weights_over_all_layers():
    from kdhelpers.chapters.compress import linear_sparsity, magnitude_pruned

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    before = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    pruned = magnitude_pruned(model, 0.6)
    assert linear_sparsity(pruned) == pytest.approx(0.6, abs=1 / 750)
    assert linear_sparsity(model) == 0.0  # the original is untouched
    all_before = torch.cat([w.flatten() for w in before]).abs()
    kept = torch.cat([m.weight.flatten() for m in pruned if isinstance(m, nn.Linear)])
    removed = all_before[kept == 0]
    assert removed.max() <= all_before[kept != 0].min()  # global: by magnitude, across layers
    assert not any(hasattr(m, "weight_orig") for m in pruned.modules())  # made permanent
    assert linear_sparsity(magnitude_pruned(model, 0.0)) == 0.0
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_pruned(model, 1.5)


def test_linear_layer_timings_report_both_kinds():
    from kdhelpers.chapters.compress import linear_layer_timings

    rows = linear_layer_timings([(16, 32)], rows=1, n=20)
    assert rows[0]["shape"] == "16x32" and rows[0]["float32_us"] > 0 and rows[0]["int8_us"] > 0
