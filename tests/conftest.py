"""Shared test helpers."""

import nbformat
import pytest


def write_tiny_notebook(path, body):
    """A two-cell notebook at `path`: the parameters cell (PROFILE, SEED) and `body`."""
    params = nbformat.v4.new_code_cell('PROFILE = "auto"\nSEED = 0')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    nbformat.write(nb, str(path))


@pytest.fixture
def tiny_notebook():
    """write_tiny_notebook(path, body), for tests that run notebooks through the course runner."""
    return write_tiny_notebook
