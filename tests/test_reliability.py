"""Reliability checks that span modules: unknown names, mismatched models, unsafe loading, offline use."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kdhelpers
from kdhelpers.data import load_sentiment
from kdhelpers.losses import distillation_loss
from kdhelpers.models import BagOfEmbeddingsStudent, init_embeddings_from_teacher
from kdhelpers.profiles import resolve_profile
from kdhelpers.students import make_student
from kdhelpers.teacher import course_settings

PACKAGE = Path(kdhelpers.__file__).parent


def test_unknown_names_are_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match="movies"):
        load_sentiment("imdb")
    with pytest.raises(ValueError, match="quick"):
        resolve_profile("medium")
    with pytest.raises(ValueError, match="profile"):
        course_settings("auto")  # must be resolved first
    with pytest.raises(ValueError, match="bag"):
        make_student("lstm", 100)


def test_teacher_and_student_that_do_not_match():
    # different label sets: 3-class teacher, 2-class student
    with pytest.raises(ValueError, match="class-count mismatch"):
        distillation_loss(torch.randn(4, 2), torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    # different vocabularies: the student cannot take the teacher's embedding table
    teacher_table = torch.randn(500, 16)
    with pytest.raises(ValueError, match="differ"):
        init_embeddings_from_teacher(BagOfEmbeddingsStudent(300, embed_dim=16), teacher_table)
    # token ids from a bigger vocabulary than the student's
    with pytest.raises(ValueError, match="vocabulary"):
        BagOfEmbeddingsStudent(300)(torch.tensor([[1, 450]]))


def test_no_unsafe_loading_anywhere_in_the_package():
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, path.name
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") == "load"
                and getattr(getattr(node.func, "value", None), "id", "") == "torch"
            ):
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and kw["weights_only"].value is True, (
                    f"torch.load in {path.name}"
                )


def test_offline_setup_check_reports_the_state_in_a_subprocess(tmp_path):
    code = (
        "from kdhelpers.setup_checks import run_checks; import json; "
        "print(json.dumps([[c.name, c.ok, c.detail] for c in run_checks('cpu')]))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    rows = {
        name: (ok, detail) for name, ok, detail in json.loads(out.stdout.strip().splitlines()[-1])
    }
    assert rows["Hugging Face hub"] == (False, "offline: HF_HUB_OFFLINE is set")
    assert rows["packaged teacher"][0] is True
