"""The headline levers: compact vocabulary, embedding-neighbour copies, de-duplication, BiLSTM."""

import pytest
import torch

from kdhelpers.chapters.headline import (
    HEADLINE_PLANS,
    HeadlinePlan,
    TransferRecipe,
    compact_vocabulary,
    embedding_neighbours,
    neighbour_copies,
    unique_rows,
)
from kdhelpers.pseudo import predict_logits
from kdhelpers.students import make_student


def test_compact_vocabulary_keeps_specials_and_seen_ids_and_maps_the_rest_to_unk():
    seqs = [[101, 7, 9, 102], [101, 9, 30, 102]]
    vm = compact_vocabulary(seqs, teacher_size=200, special_ids=(0, 100, 101, 102, 103), unk_id=100)
    assert vm.kept == (0, 100, 101, 102, 103, 7, 9, 30) and vm.size == 8
    assert vm.remap([[101, 7, 12, 102]]) == [[2, 5, 1, 3]]  # 12 was never seen: [UNK] (compact 1)
    assert vm.remap([[0]]) == [[0]]  # padding stays 0
    table = torch.arange(200.0).unsqueeze(1).repeat(1, 3)
    assert vm.rows_of(table)[:, 0].tolist() == [0, 100, 101, 102, 103, 7, 9, 30]
    with pytest.raises(ValueError, match="padding"):
        compact_vocabulary(seqs, 200, special_ids=(101, 102), unk_id=100)
    with pytest.raises(ValueError, match="outside"):
        compact_vocabulary([[260]], 200, special_ids=(0,), unk_id=1)


def test_embedding_neighbours_by_hand():
    table = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    near = embedding_neighbours(table, [0, 1, 2, 3, 4], k=1)
    assert near == {0: [1], 1: [0], 2: [3], 3: [2], 4: [2]}  # cos(4, 2) = 0 > cos(4, 3)
    near2 = embedding_neighbours(table, [0, 2, 3, 4], k=2)  # only among the candidates
    assert near2[0] == [3, 2]
    with pytest.raises(ValueError, match="more than k"):
        embedding_neighbours(table, [0, 1], k=2)


def test_neighbour_copies_swap_only_replaceable_tokens_and_are_seeded():
    neighbours = {5: [6], 7: [8]}
    seqs = [[101, 5, 7, 9, 102]]
    always = neighbour_copies(seqs, neighbours, n_copies=2, p_replace=1.0, seed=0)
    assert always == [[101, 6, 8, 9, 102]] * 2  # 9 has no neighbours; specials stay
    assert neighbour_copies(seqs, neighbours, n_copies=1, p_replace=0.0) == seqs
    a = neighbour_copies(seqs * 50, neighbours, p_replace=0.5, seed=3)
    assert a == neighbour_copies(seqs * 50, neighbours, p_replace=0.5, seed=3)
    assert 0.3 < sum(r[1] == 6 for r in a) / 50 < 0.7


def test_unique_rows_drops_repeats_and_excluded_texts():
    seqs = [[1, 2], [3], [1, 2], [4, 5], [3]]
    assert unique_rows(seqs) == [0, 1, 3]
    assert unique_rows(seqs, exclude=[[4, 5]]) == [0, 1]


def test_bilstm_student_ignores_padding_and_counts_its_parameters():
    model = make_student("bilstm", 100, seed=0, embed_dim=16, hidden=8).eval()
    ids = [[1, 5, 6, 2], [1, 7, 2]]
    together = predict_logits(model, ids, batch_size=2, device="cpu", sort_by_length=False)
    alone = torch.cat([predict_logits(model, [x], device="cpu") for x in ids])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)  # packed vs unpadded path
    same = torch.tensor([[1, 5, 6, 2], [1, 7, 8, 2]])  # equal lengths: the path without packing
    padded = torch.cat([same, torch.zeros(2, 1, dtype=torch.long)], 1)  # one pad column: packed
    mask = (padded != 0).long()
    with torch.no_grad():
        torch.testing.assert_close(model(same), model(padded, mask), rtol=1e-5, atol=1e-6)
    lstm = 2 * 4 * 8 * (16 + 8 + 2)  # two directions, four gates, two bias vectors
    assert sum(p.numel() for p in model.parameters()) == 100 * 16 + lstm + (2 * 8 * 2 + 2)


@pytest.fixture(scope="module")
def small():
    from kdhelpers.data import load_sentiment
    from kdhelpers.models import load_teacher
    from kdhelpers.teacher import tokenize_splits

    ds = load_sentiment("movies", seed=0, n_train=24, n_validation=16, n_test=16)
    ds["unlabeled"] = ds["unlabeled"].select(range(20))
    teacher, tok = load_teacher()
    return (
        tokenize_splits(ds, tok, max_length=24),
        tok,
        teacher.get_input_embeddings().weight.detach(),
    )


def test_build_transfer_sources_labels_and_no_held_out_text(small):
    from kdhelpers.chapters.headline import TransferRecipe, build_transfer

    splits, tok, table = small
    recipe = TransferRecipe(other_domains=False, tang_copies=2, neighbour_copies=2, seed=1)
    ts = build_transfer(splits, tok, table, recipe, max_length=24)
    assert len(ts.split) == len(ts.source) == len(ts.labels)
    counts = {s: ts.source.count(s) for s in set(ts.source)}
    origins = {o: ts.origin.count(o) for o in set(ts.origin)}
    assert counts["real"] == 44 and origins["movie train"] >= 24 and "other domains" not in origins
    assert 0 < counts["masked copies"] <= 2 * 44 and 0 < counts["neighbour copies"] <= 2 * 44
    rows = [tuple(s) for s in ts.split.input_ids]
    assert len(set(rows)) == len(rows)  # no duplicates
    held_out = {tuple(s) for s in splits["validation"].input_ids + splits["test"].input_ids}
    assert not held_out & set(rows)
    labelled = (ts.labels >= 0).nonzero().flatten().tolist()
    assert labelled == ts.rows_where(source=["real"], origin=["movie train"]) == list(range(24))
    assert ts.labels[labelled].tolist() == splits["train"].gold.tolist()
    again = build_transfer(splits, tok, table, recipe, max_length=24)
    assert again.split.input_ids == ts.split.input_ids  # seeded
    assert ts.rows_where(source=["real"], origin=["movie pool"]) == list(range(24, 44))
    copies_of_train = ts.rows_where(source=["masked copies"], origin=["movie train"])
    assert copies_of_train and all(ts.labels[i] == -1 for i in copies_of_train)
    with pytest.raises(ValueError, match="no rows"):
        ts.rows_where(origin=["other domains"])


def test_headline_plans_are_checked():
    assert {"quick", "standard", "full", "cpu-full"} <= set(HEADLINE_PLANS)
    for plan in HEADLINE_PLANS.values():
        assert plan.sizes[-1] == 0 and len(plan.seeds) >= 3  # every row last; 3 seeds for intervals
    recipe = TransferRecipe(tang_copies=1, neighbour_copies=1)
    with pytest.raises(ValueError, match="sizes must end with 0"):
        HeadlinePlan(recipe=recipe, sizes=(100,), seeds=(0,), epochs=1)
    with pytest.raises(ValueError, match="kind"):
        HeadlinePlan(recipe=recipe, sizes=(0,), seeds=(0,), epochs=1, kind="rnn")
    with pytest.raises(TypeError, match="recipe"):
        HeadlinePlan(recipe={}, sizes=(0,), seeds=(0,), epochs=1)
    with pytest.raises(ValueError, match="lr_grid"):
        HeadlinePlan(recipe=recipe, sizes=(0,), seeds=(0,), epochs=1, lr_grid=(1e-3, 0.0))
    with pytest.raises(ValueError, match="lr_grid holds a learning rate twice"):
        HeadlinePlan(recipe=recipe, sizes=(0,), seeds=(0,), epochs=1, lr_grid=(1e-3, 1e-3))
    with pytest.raises(ValueError, match="ablation needs a size below every row"):
        HeadlinePlan(recipe=recipe, sizes=(0,), seeds=(0,), epochs=1, ablation=True)
    with pytest.raises(ValueError, match="ablation_size must be one of"):
        HeadlinePlan(
            recipe=recipe, sizes=(100, 0), seeds=(0,), epochs=1, ablation=True, ablation_size=50
        )
    # the committed CPU run: at least 300,000 rows' worth of copies, lr chosen on validation, ablation
    cpu = HEADLINE_PLANS["cpu-full"]
    assert cpu.ablation and len(cpu.lr_grid) >= 2 and len(cpu.sizes) >= 4
    assert (
        HEADLINE_PLANS["quick"].ablation and HEADLINE_PLANS["quick"].lr_grid
    )  # CI runs both paths


def test_headline_student_round_trips_through_its_checkpoint(tmp_path, monkeypatch):
    from kdhelpers.chapters.headline import VocabMap, load_headline_student
    from kdhelpers.checkpoints import save_checkpoint

    monkeypatch.setenv("KD_CHECKPOINT_DIR", str(tmp_path))
    vm = VocabMap((0, 100, 101, 102, 7, 9), 100, 200)
    sizes = {"embed_dim": 8, "channels": 4, "widths": (2, 3)}
    student = make_student("cnn", vm.size, None, seed=3, **sizes)
    config = {"kind": "cnn", "sizes": sizes, "kept": list(vm.kept), "unk": vm.unk,
              "teacher_size": vm.teacher_size}  # fmt: skip
    save_checkpoint(student, tmp_path / "headline-cnn", config)
    model, got_vm = load_headline_student({"student_checkpoint": "headline-cnn"})
    assert got_vm == vm
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 student.state_dict().values(), strict=True))  # fmt: skip
    assert load_headline_student({"student_checkpoint": "missing"}) is None
    assert load_headline_student({}) is None


def test_headline_script_applies_kind_and_every_row_only():
    import importlib.util

    from kdhelpers.paths import project_root

    path = project_root() / "scripts" / "headline_run.py"
    spec = importlib.util.spec_from_file_location("headline_run", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    default = script.plan_from_args(script.parse_args([]))
    assert default == HEADLINE_PLANS["cpu-full"]
    bilstm = script.plan_from_args(script.parse_args(["--kind", "bilstm", "--every-row-only"]))
    assert bilstm.kind == "bilstm" and bilstm.sizes == (0,) and not bilstm.ablation
    assert bilstm.lr_grid == default.lr_grid  # its own learning rate, chosen the same way
    with pytest.raises(SystemExit):
        script.parse_args(["--plan", "nope"])
    assert script.parse_args(["--retime", "b/h.json"]).retime.as_posix() == "b/h.json"
    assert script.parse_args([]).retime is None
    with pytest.raises(SystemExit, match="nope.json does not exist"):
        script.main(["--retime", "nope.json", "--note", "x"])
    with pytest.raises(SystemExit, match="needs --note"):
        script.main(["--retime", str(path.parent.parent / "benchmarks" / "headline.json")])


def _record(path, kind, val_accs, test_acc=0.8):
    import json

    record = {"headline": {"accuracy_mean": test_acc}, "curve": [], "teacher_accuracy": 0.86,
              "transfer_rows": 10, "student": {"kind": kind},
              "lr_search": [{"lr": 1e-3, "best_val_accuracy": v} for v in val_accs]}  # fmt: skip
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def test_choose_headline_run_reads_validation_only(tmp_path):
    from kdhelpers.chapters.headline import choose_headline_run

    cnn = _record(tmp_path / "headline.json", "cnn", [0.81, 0.80], test_acc=0.95)
    lstm = _record(tmp_path / "headline-bilstm.json", "bilstm", [0.79, 0.84], test_acc=0.5)
    choice = choose_headline_run([cnn, lstm])
    assert choice.path == lstm and choice.record["student"]["kind"] == "bilstm"
    assert choice.validation == {"headline.json": 0.81, "headline-bilstm.json": 0.84}
    tie = _record(tmp_path / "headline-tie.json", "bilstm", [0.84])
    assert choose_headline_run([lstm, tie]).path == lstm  # a tie keeps the first path
    assert choose_headline_run([tie, lstm]).path == tie
    assert choose_headline_run([]) is None
    _record(tmp_path / "headline-none.json", "cnn", [])
    with pytest.raises(ValueError, match="headline-none.json has no lr_search"):
        choose_headline_run([cnn, tmp_path / "headline-none.json"])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        choose_headline_run([tmp_path / "nope.json"])


def test_choose_headline_run_defaults_to_the_benchmarks_folder(tmp_path, monkeypatch):
    from kdhelpers.chapters import headline

    _record(tmp_path / "headline.json", "cnn", [0.81])
    _record(tmp_path / "headline-bilstm.json", "bilstm", [0.84])
    (tmp_path / "results.json").write_text("{}", encoding="utf-8")  # not a headline run
    monkeypatch.setattr(headline, "benchmarks_dir", lambda: tmp_path)
    assert headline.choose_headline_run().path.name == "headline-bilstm.json"


def test_headline_misses_names_each_criterion_below_its_line():
    from kdhelpers.targets import headline_misses

    row = {"of_teacher": 0.993, "fewer_params": 10.8, "speedup_b1": 9.997}
    assert headline_misses(row) == {"speedup_b1": 9.997}
    assert headline_misses({**row, "speedup_b1": 10.0}) == {}
    assert headline_misses({**row, "of_teacher": 0.9, "fewer_params": 3}) == {
        "of_teacher": 0.9, "fewer_params": 3.0, "speedup_b1": 9.997}  # fmt: skip
    with pytest.raises(ValueError, match="speedup_b1"):
        headline_misses({"of_teacher": 1, "fewer_params": 20})


def test_time_headline_checks_its_inputs():
    from kdhelpers.chapters.headline import time_headline

    student = make_student("cnn", 20, None, seed=0, embed_dim=4, channels=2, widths=(2,))
    ids = [[1, 2, 3 + i % 10] for i in range(64)]
    with pytest.raises(ValueError, match="same snippets"):
        time_headline(student, student, ids, ids[:10], 8)
    with pytest.raises(ValueError, match="n_inputs"):
        time_headline(student, student, ids, ids, 0)
    lat1, lat64 = time_headline(student, student, ids, ids, 8)
    assert lat1["student"].n == 8 and lat1["teacher"].batch_size == 1
    assert lat64["student"].n == 1 and lat64["student"].batch_size == 64


def test_retime_headline_measures_again_and_keeps_the_old_numbers(monkeypatch):
    from kdhelpers.chapters import headline
    from kdhelpers.teacher import TextSplit

    vm = headline.VocabMap((0, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12), 100, 200)
    teacher = make_student("cnn", 200, None, seed=1, embed_dim=8, channels=4, widths=(2,))
    student = make_student("cnn", vm.size, None, seed=2, embed_dim=4, channels=2, widths=(2,))
    ids = [[1 + i % 12, 2 + i % 7, 3] for i in range(64)]
    test = TextSplit([str(i) for i in range(64)], [""] * 64, ids, torch.zeros(64, dtype=torch.long))
    monkeypatch.setattr(headline, "load_headline_student", lambda record: (student, vm))
    monkeypatch.setattr(
        headline,
        "course_teacher",
        lambda settings, device: (teacher, None, {"test": test}, None, None),
    )
    old = {"of_teacher": 0.99, "fewer_params": 11.0, "speedup_b1": 10.6, "speedup_b64": 43.0,
           "latency": {"teacher": {}, "student": {}}}  # fmt: skip
    record = {"headline": old, "machine": {"cpu": "x", "threads": 1}, "profile": "quick",
              "plan": {"latency_inputs": 20}, "student_checkpoint": "h"}  # fmt: skip
    new = headline.retime_headline(record, "alone", repeats=3)
    h = new["headline"]
    assert [(m["speedup_b1"], m["note"]) for m in h["latency_history"]] == [
        (10.6, "the run that trained the student"), (h["speedup_b1"], "alone")]  # fmt: skip
    repeats = h["latency_history"][-1]["repeats"]
    reps = sorted(r["speedup_b1"] for r in repeats)
    assert len(reps) == 3 and h["speedup_b1"] == reps[1]  # the median of three measurements
    # each speed-up's latency record is its own median repeat's, checkable against the repeats
    for b in ("b1", "b64"):
        match = [r for r in repeats if r[f"speedup_{b}"] == h[f"speedup_{b}"]]
        assert match and any(
            r[f"median_ms_{b}"]
            == {m: h["latency"][m][b]["median_ms"] for m in ("teacher", "student")}
            for r in match
        ), b
    again = headline.retime_headline(new, " again ", repeats=1)["headline"]["latency_history"]
    assert len(again) == 3 and again[:2] == h["latency_history"] and again[2]["note"] == "again"
    with pytest.raises(ValueError, match="note"):
        headline.retime_headline(record, " ")
    with pytest.raises(ValueError, match="repeats"):
        headline.retime_headline(record, "x", repeats=0)
    assert h["latency"]["student"]["b1"]["n"] == 20 and h["latency"]["student"]["b64"]["n"] == 1
    assert h["speedup_b1"] == pytest.approx(
        h["latency"]["teacher"]["b1"]["median_ms"] / h["latency"]["student"]["b1"]["median_ms"]
    )
    assert h["of_teacher"] == 0.99 and record["headline"] is old  # the input is left as it was
    monkeypatch.setattr(headline, "load_headline_student", lambda record: None)
    with pytest.raises(FileNotFoundError, match="'h' is not on this machine"):
        headline.retime_headline(record, "alone")


def test_choose_headline_run_refuses_runs_that_do_not_compare(tmp_path):
    import json

    from kdhelpers.chapters.headline import choose_headline_run

    a = _record(tmp_path / "headline.json", "cnn", [0.81])
    b = _record(tmp_path / "headline-b.json", "bilstm", [0.84])
    other = json.loads(b.read_text(encoding="utf-8"))
    other["teacher_accuracy"] = 0.80
    b.write_text(json.dumps(other), encoding="utf-8")
    with pytest.raises(ValueError, match="teacher_accuracy"):
        choose_headline_run([a, b])
    nan = _record(tmp_path / "headline-nan.json", "cnn", [float("nan")])
    with pytest.raises(ValueError, match="NaN"):
        choose_headline_run([nan])
