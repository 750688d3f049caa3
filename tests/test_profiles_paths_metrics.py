"""Profiles, folders, metrics and results files."""

import json

import pytest
import torch

from kdhelpers import paths
from kdhelpers.metrics import accuracy
from kdhelpers.profiles import choose, resolve_profile
from kdhelpers.results import save_results


def test_resolve_profile():
    assert resolve_profile("quick") == "quick"
    assert resolve_profile("auto", device="cpu") == "standard"
    assert resolve_profile("auto", device="cuda") == "full"
    assert resolve_profile("STANDARD") == "standard"
    with pytest.raises(ValueError, match="PROFILE"):
        resolve_profile("fast")
    with pytest.raises(ValueError, match="PROFILE"):
        resolve_profile(None)


def test_choose_falls_back_to_standard_for_full():
    assert choose("quick", quick=1, standard=2) == 1
    assert choose("full", quick=1, standard=2) == 2
    assert choose("full", quick=1, standard=2, full=3) == 3
    assert choose("auto", quick=1, standard=2, full=3, device="cpu") == 2


def test_folders_follow_env(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("KD_RESULTS_DIR", str(tmp_path / "r"))
    assert paths.data_dir() == tmp_path / "d" and (tmp_path / "d").is_dir()
    assert paths.results_dir() == tmp_path / "r"
    assert (paths.project_root() / "pyproject.toml").exists()


def test_accuracy_and_bad_input():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels"):
        accuracy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.empty(0, 2), torch.empty(0, dtype=torch.long))
    with pytest.raises(TypeError):
        accuracy([[1.0, 0.0]], torch.tensor([0]))


def test_save_results_writes_json_atomically(tmp_path):
    path = save_results(
        "99_test", {"acc": torch.tensor(0.5), "n": 3}, "quick", {"curve": [1, 2]}, folder=tmp_path
    )
    data = json.loads(path.read_text())
    assert data["metrics"] == {"acc": 0.5, "n": 3}
    assert data["details"]["curve"] == [1, 2] and data["profile"] == "quick"
    assert [p.name for p in tmp_path.iterdir()] == ["99_test.json"]
    with pytest.raises(ValueError, match="metrics"):
        save_results("99_test", {}, "quick", folder=tmp_path)


def test_ece_hand_computed():
    import math

    from kdhelpers.metrics import expected_calibration_error, reliability_bins

    # confidence 0.9 on every row, 3 of 4 right: |0.75 - 0.9| = 0.15
    z = math.log(9.0)
    logits = torch.tensor([[z, 0.0], [z, 0.0], [z, 0.0], [0.0, z]])
    labels = torch.tensor([0, 0, 0, 0])
    assert expected_calibration_error(logits, labels, n_bins=10) == pytest.approx(0.15, abs=1e-6)
    bins = reliability_bins(logits, labels, n_bins=10)
    assert [b["n"] for b in bins] == [0] * 8 + [4, 0]
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins(logits, labels, n_bins=0)


def test_course_table_command_reads_results(tmp_path, capsys):
    from kdhelpers.course.cli import main
    from kdhelpers.course.runner import list_notebooks

    save_results("05_x", {"acc": 0.75}, "standard", folder=tmp_path)
    assert main(["table", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 05_x | acc | 0.75 | standard |" in out
    with pytest.raises(ValueError, match="no notebook"):
        list_notebooks(only=["99"])


def test_clean_notebook_drops_progress_bars_and_paths():
    from kdhelpers.course.runner import clean_notebook

    bar = "train 1/3:   0%|          | 0/94 [00:00<?, ?it/s]\rtrain 1/3: 100%|##| 94/94 [00:01<00:00]\n"
    nb = {
        "metadata": {"papermill": {"input_path": "/x"}, "jupytext": {}},
        "cells": [
            {
                "cell_type": "code",
                "metadata": {"papermill": {}, "execution": {}},
                "outputs": [
                    {"output_type": "stream", "name": "stderr", "text": bar},
                    {"output_type": "stream", "name": "stderr", "text": bar + "a real warning\n"},
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {
                            "application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                            "text/plain": ["t 1/2:   0%|   | 0/8 [00:00<?, ?it/s]"],
                        },
                    },
                    {"output_type": "stream", "name": "stdout", "text": "result 0.5\n"},
                ],
            }
        ],
    }
    out = clean_notebook(nb)
    assert "papermill" not in out["metadata"] and out["metadata"]["kernelspec"]["name"] == "python3"
    outputs = out["cells"][0]["outputs"]
    assert [o["text"] for o in outputs] == ["a real warning\n", "result 0.5\n"]


def test_progress_bar_respects_env(monkeypatch):
    from kdhelpers.progress import progress_bar

    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_bar(range(3), "x").disable
    monkeypatch.delenv("TQDM_DISABLE")
    assert not progress_bar(range(3), "x").disable
    assert progress_bar(range(3), "x", enabled=False).disable


def test_fit_temperature_recovers_a_known_temperature():
    from kdhelpers.metrics import fit_temperature

    g = torch.Generator().manual_seed(0)
    true = torch.randn(4000, 3, generator=g) * 2
    labels = torch.multinomial(torch.softmax(true, -1), 1, generator=g).squeeze(1)
    # logits that are 2.5x too confident: the fitted temperature should undo that
    assert fit_temperature(true * 2.5, labels) == pytest.approx(2.5, abs=0.25)
    with pytest.raises(ValueError, match="grid"):
        fit_temperature(true, labels, grid=[0.0, 1.0])


def test_positive_rater_share():
    from kdhelpers.data import positive_rater_share

    share = positive_rater_share([[1, 2, -1, 0], [0, 0], [-3, -1]])
    assert share.tolist() == [2 / 3, 0.5, 0.0]


def test_load_results_and_chosen_alpha_temperature(tmp_path, monkeypatch):
    from kdhelpers.results import load_results, save_results
    from kdhelpers.students import chosen_alpha_temperature

    monkeypatch.setenv("KD_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr("kdhelpers.results.committed_results_dir", lambda: tmp_path / "none")
    assert load_results("05_distillation") == {}
    assert chosen_alpha_temperature("standard") == (0.1, 4.0, False)
    save_results("05_distillation", {"alpha": 0.0, "temperature": 8.0}, "standard")
    assert load_results("05_distillation")["metrics"] == {"alpha": 0.0, "temperature": 8.0}
    assert load_results("05_distillation", "standard")["profile"] == "standard"
    assert load_results("05_distillation", "quick") == {}  # another profile's numbers are not used
    assert chosen_alpha_temperature("standard") == (0.0, 8.0, True)
    assert chosen_alpha_temperature("quick", default=(0.5, 2.0)) == (0.5, 2.0, False)
    with pytest.raises(ValueError, match="plain name"):
        load_results("../secrets")


@pytest.mark.parametrize(
    "env,getter",
    [
        ("KD_DATA_DIR", "data_dir"),
        ("KD_CACHE_DIR", "cache_dir"),
        ("KD_CHECKPOINT_DIR", "checkpoints_dir"),
        ("KD_RESULTS_DIR", "results_dir"),
    ],
)
def test_impossible_folder_names_its_variable(tmp_path, monkeypatch, env, getter):
    from kdhelpers.paths import UnwritableFolderError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(
        env, str(blocker / "inside")
    )  # a folder under a regular file: even root fails
    with pytest.raises(UnwritableFolderError) as info:
        getattr(paths, getter)()
    message = str(info.value)
    assert env in message and str(blocker / "inside") in message and "Point" in message
