"""What a submitted notebook must be before it is queued."""

from __future__ import annotations

import json

import nbformat
import pytest

from fermi_extension.errors import InvalidInput, TooLarge, http_status
from fermi_extension.jobs.notebook import load_notebook


def runnable(*sources: str) -> dict:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in (sources or ("x = 1",))]
    return json.loads(nbformat.writes(nb))


def test_valid_notebook_dict_is_returned_unchanged():
    nb = runnable("x = 1", "print(x)")
    assert load_notebook(nb) == nb


def test_valid_notebook_json_string_is_parsed():
    nb = runnable("x = 1")
    assert load_notebook(json.dumps(nb)) == nb


def test_malformed_json_is_invalid_input():
    with pytest.raises(InvalidInput) as caught:
        load_notebook('{"cells": [')
    assert "not valid JSON" in caught.value.message


@pytest.mark.parametrize("not_a_notebook", [[1, 2], "[]", "42", 42])
def test_json_that_is_not_an_object_is_invalid_input(not_a_notebook):
    with pytest.raises(InvalidInput):
        load_notebook(not_a_notebook)


def test_object_without_cells_is_not_a_notebook():
    nb = runnable()
    del nb["cells"]
    with pytest.raises(InvalidInput) as caught:
        load_notebook(nb)
    assert "cells" in caught.value.message


def test_cell_with_an_unknown_cell_type_is_invalid_nbformat():
    nb = runnable()
    nb["cells"][0]["cell_type"] = "banana"
    with pytest.raises(InvalidInput) as caught:
        load_notebook(nb)
    assert "not valid nbformat" in caught.value.message


def test_missing_kernelspec_is_invalid_input_that_mentions_the_kernel():
    nb = runnable()
    del nb["metadata"]["kernelspec"]
    with pytest.raises(InvalidInput) as caught:
        load_notebook(nb)
    assert "kernel" in caught.value.message
    assert http_status(caught.value) == 400


def test_kernelspec_without_a_name_is_invalid_input():
    nb = runnable()
    nb["metadata"]["kernelspec"] = {"display_name": "Python 3"}
    with pytest.raises(InvalidInput):
        load_notebook(nb)


def test_kernelspec_without_a_name_says_the_kernel_is_missing():
    nb = runnable()
    nb["metadata"]["kernelspec"] = {"display_name": "Python 3"}
    with pytest.raises(InvalidInput, match="kernel"):
        load_notebook(nb)


def test_oversized_notebook_dict_is_too_large_413():
    nb = runnable("x = '" + "a" * 2000 + "'")
    with pytest.raises(TooLarge) as caught:
        load_notebook(nb, max_bytes=1000)
    assert http_status(caught.value) == 413
    assert "Clear Outputs" in caught.value.message


def test_oversized_notebook_string_is_too_large_before_it_is_parsed():
    # not even valid JSON: the size is checked first, so a huge upload is not parsed
    with pytest.raises(TooLarge):
        load_notebook("{" + " " * 2000, max_bytes=1000)


def test_notebook_under_the_limit_is_accepted():
    nb = runnable("x = 1")
    assert load_notebook(nb, max_bytes=len(json.dumps(nb)) + 1) == nb
