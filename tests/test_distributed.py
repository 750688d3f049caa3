"""kdhelpers.chapters.distributed: step normalisation, accumulation, and 2 CPU processes vs 1 (gloo, torchrun)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from kdhelpers.batching import TextExamples
from kdhelpers.chapters.distributed import (
    DistillConfig,
    distill_accelerate,
    epoch_order,
    kd_loss_parts,
    make_accelerator,
    max_abs_difference,
    shared_teacher_logits,
    step_loss,
)
from kdhelpers.models import BagOfEmbeddingsStudent, without_dropout
from kdhelpers.paths import project_root
from kdhelpers.train import make_kd_loss

#: Step losses of runs that add the same gradients in another order (2 processes x 2 micro-batches
#: vs 1 process x 2). The losses (0.3-0.5) are float32 sums over 16-32 rows scaled by T^2 = 64, so
#: summation order alone moves them by about 1e-6: measured 0.8e-6..1.6e-6 with 6 unseeded teachers
#: (alpha 0), 1.1e-6 with the seeded teacher (alpha 0.5) that the test trains. Broken
#: normalisations (counts not reduced over ranks, no world-size factor, a micro-batch left unsynced)
#: moved them by 0.3-1.
LOSS_TOLERANCE = 1e-5


def _batch(n=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g, requires_grad=True)
    teacher = torch.randn(n, classes, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[[1, 2, 3, 7, 8, 10, 11]] = -1  # unlabelled rows, unevenly spread over the micro-batches
    return logits, teacher, labels


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="multiple of grad_accum"):
        DistillConfig(batch_size=10, grad_accum=3)
    with pytest.raises(ValueError, match="epochs"):
        DistillConfig(epochs=0)
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ValueError, match="lr"):
        DistillConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="normalisation"):
        DistillConfig(normalisation="mean")
    assert DistillConfig(batch_size=64, grad_accum=4).micro_batch_size == 16


def test_step_loss_over_micro_batches_equals_the_big_batch_loss_and_gradient():
    logits, teacher, labels = _batch()
    alpha, T = 0.3, 2.0
    reference = make_kd_loss(alpha, T)(logits, {"labels": labels, "teacher_logits": teacher})
    (g_ref,) = torch.autograd.grad(reference, logits)

    cuts = [(0, 4), (4, 9), (9, 12)]  # 3 micro-batches of different sizes and labelled counts
    n_lab, n = int((labels >= 0).sum()), len(labels)
    total = sum(
        step_loss(kd_loss_parts(logits[a:b], teacher[a:b], labels[a:b], T), n_lab, n, alpha)
        for a, b in cuts
    )
    (g_acc,) = torch.autograd.grad(total, logits)
    torch.testing.assert_close(total, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_acc, g_ref, rtol=1e-6, atol=1e-7)

    # the naive recipe (each micro-batch's mean loss / number of micro-batches) is not the same loss
    naive = sum(
        make_kd_loss(alpha, T)(logits[a:b], {"labels": labels[a:b], "teacher_logits": teacher[a:b]})
        for a, b in cuts
    ) / len(cuts)
    assert abs(naive.item() - reference.item()) > 1e-3


def test_step_loss_scales_by_world_size_and_checks_counts():
    logits, teacher, labels = _batch()
    parts = kd_loss_parts(logits, teacher, labels, 2.0)
    one = step_loss(parts, 5, 12, 0.5, world_size=1)
    torch.testing.assert_close(step_loss(parts, 5, 12, 0.5, world_size=4), 4 * one)
    with pytest.raises(ValueError, match="n >= 1"):
        step_loss(parts, 0, 0, 0.5)


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    a, b = epoch_order(50, seed=3, epoch=0), epoch_order(50, seed=3, epoch=0)
    assert a == b and sorted(a) == list(range(50))
    assert epoch_order(50, seed=3, epoch=1) != a
    assert epoch_order(50, seed=4, epoch=0) != a


def _synthetic(n=40, vocab=30, classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = [
        torch.randint(
            1, vocab, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g
        ).tolist()
        for _ in range(n)
    ]
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[::3] = -1
    return TextExamples(ids, labels, torch.randn(n, classes, generator=g))


def _train(examples, grad_accum, alpha=0.5, normalisation="step"):
    torch.manual_seed(0)
    model = without_dropout(BagOfEmbeddingsStudent(30, embed_dim=8, hidden=8))
    acc = make_accelerator(cpu=True)
    config = DistillConfig(
        epochs=2,
        lr=1e-2,
        batch_size=8,
        grad_accum=grad_accum,
        alpha=alpha,
        temperature=2.0,
        normalisation=normalisation,
    )
    history = distill_accelerate(acc, model, examples, config)
    return {k: v.detach().clone() for k, v in acc.unwrap_model(model).state_dict().items()}, history


def test_gradient_accumulation_trains_the_same_model_as_one_big_batch():
    examples = _synthetic()
    w1, h1 = _train(examples, 1)
    w4, h4 = _train(examples, 4)
    assert len(h1["step_loss"]) == len(h4["step_loss"]) == 2 * (40 // 8)
    assert max(abs(a - b) for a, b in zip(h1["step_loss"], h4["step_loss"], strict=True)) < 1e-6
    assert max_abs_difference(w1, w4) < 1e-6
    w_other, _ = _train(examples, 1, alpha=0.9)  # and the comparison can tell different runs apart
    assert max_abs_difference(w1, w_other) > 1e-4
    w_naive, _ = _train(
        examples, 4, normalisation="micro-batch"
    )  # uneven labelled counts: a different model
    assert max_abs_difference(w1, w_naive) > 1e-4
    w_naive1, _ = _train(
        examples, 1, normalisation="micro-batch"
    )  # one micro-batch per step: no difference
    assert max_abs_difference(w1, w_naive1) < 1e-6


def test_distill_accelerate_rejects_bad_input():
    acc = make_accelerator(cpu=True)
    model = BagOfEmbeddingsStudent(30, embed_dim=8, hidden=8)
    with pytest.raises(ValueError, match="teacher_logits"):
        distill_accelerate(acc, model, TextExamples([[1, 2]], [0]), DistillConfig())
    with pytest.raises(TypeError, match="DistillConfig"):
        distill_accelerate(acc, model, _synthetic(), {"epochs": 1})
    with pytest.raises(ValueError, match="micro-batch"):
        distill_accelerate(acc, model, _synthetic(n=5), DistillConfig(batch_size=8))
    with pytest.raises(ValueError, match="mixed_precision"):
        make_accelerator(cpu=True, mixed_precision="fp8-please")


def test_shared_teacher_logits_computes_once_then_reads_the_cache(tmp_path):
    torch.manual_seed(0)
    teacher = BagOfEmbeddingsStudent(30, embed_dim=8, hidden=8).eval()
    ex = _synthetic(n=10)
    acc = make_accelerator(cpu=True)
    ids = [f"x{i}" for i in range(10)]
    first = shared_teacher_logits(acc, teacher, ids, ex.input_ids, tmp_path)
    second = shared_teacher_logits(acc, teacher, ids, ex.input_ids, tmp_path)
    assert not first.from_cache and second.from_cache
    torch.testing.assert_close(first.logits, second.logits)


def _run(cmd, tmp_path, extra_env):
    env = {
        **os.environ,
        **extra_env,
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        "KD_DEVICE": "cpu",
    }
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{' '.join(cmd[:6])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )


def _launch(tmp_path, dirs, name, processes, grad_accum):
    """Run the chapter script on `processes` CPU processes; its JSON summary and final weights."""
    script = str(project_root() / "scripts" / "distill_multi_gpu.py")
    launcher = [sys.executable]
    if processes > 1:
        launcher += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
        ]
    # alpha > 0: the CE term is normalised by labelled rows, which the ranks hold unevenly
    _run(
        [
            *launcher,
            script,
            "--profile",
            "quick",
            "--cpu",
            "--no-dropout",
            "--alpha",
            "0.5",
            "--grad-accum",
            str(grad_accum),
            "--out",
            f"{name}.json",
            "--save-state",
            f"{name}.safetensors",
        ],
        tmp_path,
        dirs,
    )
    return (
        json.loads((tmp_path / f"{name}.json").read_text()),
        load_file(str(tmp_path / f"{name}.safetensors")),
    )


@pytest.mark.distributed
def test_two_cpu_processes_match_one_process(tmp_path):
    dirs = {
        "KD_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "KD_CACHE_DIR": str(tmp_path / "cache"),
        "KD_RESULTS_DIR": str(tmp_path / "results"),
    }
    # Each step holds 32 examples. 2 processes x 1 micro-batch and 1 process x 2 micro-batches
    # cut them into the same two halves of 16 (rank r's share = micro-batch r), pad and run each
    # half alone, and add the two half-gradients once (DDP's sum, or accumulation in .grad;
    # a + b == b + a in float32); the loss scale world_size = 2 and DDP's division by 2 are exact.
    # Same float32 arithmetic, one thread per process (OMP_NUM_THREADS=1): the two runs must
    # agree bit for bit. (Any other pairing, such as the old 2 x 2 vs 1 x 2, sums the rows'
    # gradients in another order; that round-off, about 1e-7 relative, is then amplified by
    # max-pool and ReLU switches and Adam's per-coordinate scaling to 2e-5..1e-2 in the weights
    # after 28 steps, depending on the teacher, so no fixed weight tolerance fits it.)
    # two processes first, on an empty cache: rank 0 trains the teacher and computes the logits
    two, w_two = _launch(tmp_path, dirs, "two", processes=2, grad_accum=1)
    one, w_one = _launch(tmp_path, dirs, "one", processes=1, grad_accum=2)
    assert (two["world_size"], one["world_size"]) == (2, 1)
    assert two["teacher_logits_from_cache_per_rank"] == [False, True]  # computed once, by rank 0
    assert one["teacher_logits_from_cache_per_rank"] == [True]
    assert len(one["step_loss"]) == len(two["step_loss"]) > 0
    gap = max(abs(a - b) for a, b in zip(one["step_loss"], two["step_loss"], strict=True))
    assert gap == 0.0, f"step losses differ by up to {gap}"
    diff = max_abs_difference(w_one, w_two)
    assert diff == 0.0, f"weights differ by {diff}"
    assert one["test_accuracy"] == two["test_accuracy"]

    # gradient accumulation on each of two processes (no_sync on all but the last micro-batch):
    # the same steps up to summation order, so the losses agree within LOSS_TOLERANCE
    accum, _ = _launch(tmp_path, dirs, "two_accum", processes=2, grad_accum=2)
    assert accum["world_size"] == 2 and len(accum["step_loss"]) == len(one["step_loss"])
    gap = max(abs(a - b) for a, b in zip(one["step_loss"], accum["step_loss"], strict=True))
    assert gap < LOSS_TOLERANCE, f"step losses differ by up to {gap}"
