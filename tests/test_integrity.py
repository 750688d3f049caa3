"""Stored checkpoints are verified against a digest of their tensors; temp files and unusable folders."""

import json
import os
import time

import pytest
import torch

from kdhelpers import paths as folders
from kdhelpers.checkpoints import (
    INTEGRITY_KEY,
    CheckpointError,
    checkpoint_paths,
    file_digest,
    load_checkpoint,
    save_checkpoint,
    tensor_digest,
)
from kdhelpers.models import BagOfEmbeddingsStudent
from kdhelpers.pseudo import model_fingerprint


def student(seed=0):
    torch.manual_seed(seed)
    return BagOfEmbeddingsStudent(30, embed_dim=4, hidden=8)


def flip_one_bit(path, offset_from_end=7):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01  # the last bytes are tensor data, not the JSON header
    path.write_bytes(bytes(data))


def test_digest_covers_names_dtypes_shapes_values_and_matches_the_file():
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    base = tensor_digest(a)
    assert tensor_digest(dict(reversed(list(a.items())))) == base  # fixed (sorted) order
    assert tensor_digest({**a, "w": -a["w"]}) != base
    assert tensor_digest({**a, "w": a["w"].reshape(3, 2)}) != base
    assert tensor_digest({**a, "w": a["w"].double()}) != base
    assert tensor_digest({"v": a["w"], "b": a["b"]}) != base
    assert tensor_digest({**a, "s": torch.tensor(3)}) != base  # 0-dim tensors work
    model = student()
    assert model_fingerprint(model) == tensor_digest(model.state_dict())


def test_checkpoint_records_a_digest_and_loads_bit_exact(tmp_path):
    a = student()
    weights = save_checkpoint(a, tmp_path / "s", {"note": "x"})
    _, meta = checkpoint_paths(weights)
    stored = json.loads(meta.read_text())
    assert stored[INTEGRITY_KEY]["tensors_sha256"] == file_digest(weights)
    b = student(1)
    config = load_checkpoint(b, tmp_path / "s")
    assert INTEGRITY_KEY not in config and config["note"] == "x"
    for va, vb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.safetensors"]


def test_a_flipped_bit_in_the_weights_is_refused_naming_the_file(tmp_path):
    weights = save_checkpoint(student(), tmp_path / "s")
    flip_one_bit(weights)
    with pytest.raises(CheckpointError, match=r"s\.safetensors.*digest.*Delete"):
        load_checkpoint(student(), tmp_path / "s")


def test_weights_copied_from_another_checkpoint_are_refused(tmp_path):
    save_checkpoint(student(0), tmp_path / "one", {"lr": 1})
    save_checkpoint(student(1), tmp_path / "two", {"lr": 2})
    (tmp_path / "two.safetensors").write_bytes((tmp_path / "one.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="different checkpoints"):
        load_checkpoint(student(), tmp_path / "two")


@pytest.mark.parametrize(
    "damage", ["truncate-json", "not-json", "no-json", "truncate-weights", "no-digest"]
)
def test_damaged_or_unverifiable_checkpoints_name_the_file_and_the_fix(tmp_path, damage):
    weights = save_checkpoint(student(), tmp_path / "s")
    _, meta = checkpoint_paths(weights)
    expected_file = meta.name
    if damage == "truncate-json":
        meta.write_text(meta.read_text()[:20])
    elif damage == "not-json":
        meta.write_bytes(b"\xff\xfe garbage")
    elif damage == "no-json":
        meta.unlink()
    elif damage == "truncate-weights":
        weights.write_bytes(weights.read_bytes()[:200])
        expected_file = weights.name
    else:  # the format of earlier versions: a config without a digest
        record = json.loads(meta.read_text())
        del record[INTEGRITY_KEY]
        meta.write_text(json.dumps(record))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(student(), tmp_path / "s")
    message = str(info.value)
    assert expected_file in message and "retrain" in message and "Delete" in message
    if damage == "no-digest":  # the documented way to keep a trusted old checkpoint
        assert "verify=False" in message
        model = student(1)
        load_checkpoint(model, tmp_path / "s", verify=False)
        save_checkpoint(model, tmp_path / "s")
        load_checkpoint(student(), tmp_path / "s")


def test_unwritable_checkpoint_folder_names_the_variable(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("KD_CHECKPOINT_DIR", str(blocker))
    with pytest.raises(folders.UnwritableFolderError, match="KD_CHECKPOINT_DIR") as info:
        save_checkpoint(student(), blocker / "s")
    assert str(blocker) in str(info.value)
    assert isinstance(info.value, OSError)


def test_stale_temp_files_are_removed_but_a_live_writers_are_kept(tmp_path):
    host = folders._host()
    dead = tmp_path / f".x.safetensors.{host}-999999999.abc.tmp"  # no such process
    live = tmp_path / f".x.safetensors.{host}-{os.getpid()}.def.tmp"
    fresh_dead = tmp_path / f".y.safetensors.{host}-999999999.ghi.tmp"
    other_host = tmp_path / ".x.safetensors.elsewhere-12.jkl.tmp"
    old_style = tmp_path / ".x.safetensors.mno.tmp"
    ancient = tmp_path / ".z.json.pqr.tmp"
    keep = tmp_path / "x.safetensors"
    for p in (dead, live, fresh_dead, other_host, old_style, ancient, keep):
        p.write_text("x")
    hour_ago = time.time() - 3600
    for p in (dead, live, other_host, old_style, keep):
        os.utime(p, (hour_ago, hour_ago))
    day_ago = time.time() - folders.STALE_AFTER_S - 60
    os.utime(ancient, (day_ago, day_ago))
    removed = folders.remove_stale_temp(tmp_path)
    assert sorted(p.name for p in removed) == sorted([dead.name, ancient.name])
    assert all(p.exists() for p in (live, fresh_dead, other_host, old_style, keep))


def test_temp_names_record_host_and_pid(tmp_path):
    tmp = folders.make_temp(tmp_path / "t.safetensors", "KD_CACHE_DIR", "logit cache")
    assert tmp.name.startswith(f".t.safetensors.{folders._host()}-{os.getpid()}.")
    old = time.time() - 3600
    os.utime(tmp, (old, old))
    assert folders.remove_stale_temp(tmp_path) == []  # this process is alive
