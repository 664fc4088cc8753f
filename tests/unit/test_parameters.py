"""Notebook parameters: what the submit dialog and `fermi jobs submit -p` offer and check."""

from __future__ import annotations

import nbformat
import pytest

from fermi_extension.errors import InvalidInput
from fermi_extension.jobs.parameters import (
    Parameter,
    check_parameters,
    coerce_text,
    detect_parameters,
)


def notebook(parameters: str | None, *, tag: str = "parameters") -> dict:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# Training"))
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    nb.cells.append(nbformat.v4.new_code_cell("print(1)"))
    return nb


def by_name(nb: dict) -> dict[str, Parameter]:
    return {p.name: p for p in detect_parameters(nb)}


# -- detection ----------------------------------------------------------------------------


def test_plain_assignments_are_parameters_with_types_from_their_literals():
    found = detect_parameters(notebook(
        "epochs = 10\n"
        "learning_rate = 0.1\n"
        "model_name = 'resnet'\n"
        "shuffle = True\n"
        "layers = [64, 32]\n"
        "options = {'seed': 1}\n"
        "offset = -3\n"
    ))
    assert [(p.name, p.type, p.default) for p in found] == [
        ("epochs", "int", 10),
        ("learning_rate", "float", 0.1),
        ("model_name", "str", "resnet"),
        ("shuffle", "bool", True),
        ("layers", "list", [64, 32]),
        ("options", "dict", {"seed": 1}),
        ("offset", "int", -3),
    ]


def test_annotation_decides_the_type_over_the_literal():
    params = by_name(notebook("lr: float = 1\nsteps: int = 5\ntags: List = []\n"))
    assert params["lr"].type == "float"
    assert params["lr"].default == 1
    assert params["steps"].type == "int"
    assert params["tags"].type == "list"


def test_annotation_without_a_value_is_not_a_parameter():
    assert [p.name for p in detect_parameters(notebook("epochs: int\nseed = 3\n"))] == ["seed"]


def test_trailing_comment_is_the_help_text():
    params = by_name(notebook("epochs = 10  # passes over the data\nseed = 0\n"))
    assert params["epochs"].help == "passes over the data"
    assert params["seed"].help == ""


def test_hash_inside_a_string_default_is_not_taken_for_a_comment():
    params = by_name(notebook('url = "https://example.org/data#v2"  # where the data is\n'))
    assert params["url"].default == "https://example.org/data#v2"
    assert params["url"].help == "where the data is"


def test_non_literal_default_gives_type_any_without_a_default():
    params = by_name(notebook("import os\ndata_dir = os.getcwd()\nnothing = None\n"))
    assert set(params) == {"data_dir", "nothing"}
    assert (params["data_dir"].type, params["data_dir"].default) == ("any", None)
    assert params["nothing"].type == "any"


def test_statements_that_are_not_single_name_assignments_are_ignored():
    params = by_name(notebook("a = b = 1\nx, y = 1, 2\ncfg = {}\ncfg['k'] = 2\nprint('hi')\n"))
    assert set(params) == {"cfg"}


def test_reassigned_parameter_keeps_its_last_value():
    found = detect_parameters(notebook("epochs = 1\nseed = 0\nepochs = 20\n"))
    assert [(p.name, p.default) for p in found] == [("seed", 0), ("epochs", 20)]


def test_source_as_list_of_lines_is_read_like_a_string():
    nb = notebook(None)
    nb.cells.append({"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [],
                     "execution_count": None, "source": ["epochs = 3\n", "lr = 0.5\n"]})
    assert [(p.name, p.default) for p in detect_parameters(nb)] == [("epochs", 3), ("lr", 0.5)]


def test_notebook_without_a_parameters_cell_has_no_parameters():
    assert detect_parameters(notebook(None)) == []
    assert detect_parameters(notebook("epochs = 10", tag="setup")) == []


def test_syntax_error_in_the_parameters_cell_is_invalid_input_with_the_line():
    with pytest.raises(InvalidInput) as caught:
        detect_parameters(notebook("epochs = 10\nlr = = 0.1\n"))
    assert "parameters cell is not valid Python" in caught.value.message
    assert "line 2" in caught.value.message


# -- checking submitted values ------------------------------------------------------------

DECLARED = [
    Parameter(name="epochs", type="int", default=10),
    Parameter(name="lr", type="float", default=0.1),
    Parameter(name="model", type="str", default="resnet"),
    Parameter(name="shuffle", type="bool", default=True),
    Parameter(name="layers", type="list", default=[1]),
    Parameter(name="data_dir", type="any", default=None),
]


def test_values_of_the_declared_types_are_accepted():
    values = {"epochs": 3, "lr": 0.01, "model": "vit", "shuffle": False, "layers": [2, 3],
              "data_dir": "/tmp"}
    assert check_parameters(DECLARED, values) == values


def test_unknown_parameter_is_named_and_known_ones_listed():
    with pytest.raises(InvalidInput) as caught:
        check_parameters(DECLARED, {"epoch": 3})
    message = caught.value.message
    assert "'epoch'" in message
    for name in ("epochs", "lr", "model", "shuffle"):
        assert name in message


def test_unknown_parameter_on_a_notebook_without_parameters_says_how_to_add_them():
    with pytest.raises(InvalidInput) as caught:
        check_parameters([], {"epochs": 3})
    assert "parameters" in caught.value.message


def test_wrong_type_names_the_parameter_and_its_type():
    with pytest.raises(InvalidInput) as caught:
        check_parameters(DECLARED, {"epochs": "ten"})
    assert "'epochs'" in caught.value.message
    assert "int" in caught.value.message


def test_int_is_accepted_for_float():
    assert check_parameters(DECLARED, {"lr": 1}) == {"lr": 1}


@pytest.mark.parametrize("value", [True, False])
def test_bool_is_not_accepted_for_int_or_float(value):
    with pytest.raises(InvalidInput):
        check_parameters(DECLARED, {"epochs": value})
    with pytest.raises(InvalidInput):
        check_parameters(DECLARED, {"lr": value})


def test_float_is_not_accepted_for_int():
    with pytest.raises(InvalidInput):
        check_parameters(DECLARED, {"epochs": 2.5})


def test_none_default_accepts_anything():
    for value in (1, "x", [1], {"a": 1}, None, True):
        assert check_parameters(DECLARED, {"data_dir": value}) == {"data_dir": value}


def test_detected_parameters_check_submitted_values_end_to_end():
    declared = detect_parameters(notebook("epochs = 10  # passes\nlr = 0.1\n"))
    assert check_parameters(declared, {"epochs": 5, "lr": 1}) == {"epochs": 5, "lr": 1}
    with pytest.raises(InvalidInput):
        check_parameters(declared, {"lr": "fast"})


# -- command-line values (-p NAME VALUE) --------------------------------------------------


def param(kind: str) -> Parameter:
    return Parameter(name="p", type=kind)


def test_text_becomes_an_int_for_an_int_parameter():
    assert coerce_text(param("int"), "10") == 10
    assert type(coerce_text(param("int"), "10")) is int


def test_text_becomes_a_float_for_a_float_parameter():
    assert coerce_text(param("float"), "0.5") == 0.5
    value = coerce_text(param("float"), "10")
    assert value == 10.0 and type(value) is float


def test_scientific_notation_becomes_a_float_for_a_float_parameter():
    assert coerce_text(param("float"), "1e-3") == 0.001


def test_text_stays_text_for_a_str_parameter_even_when_it_looks_like_a_number():
    assert coerce_text(param("str"), "10") == "10"
    assert coerce_text(param("str"), "true") == "true"


def test_true_becomes_a_bool_for_a_bool_parameter():
    assert coerce_text(param("bool"), "true") is True
    assert coerce_text(param("bool"), "false") is False


def test_lists_and_undeclared_names_are_parsed_as_yaml():
    assert coerce_text(param("list"), "[1, 2]") == [1, 2]
    assert coerce_text(None, "3") == 3
    assert coerce_text(None, "hello") == "hello"


def test_unparseable_text_is_kept_as_text_for_the_type_check_to_reject():
    value = coerce_text(param("int"), "[1, 2")
    assert value == "[1, 2"
    with pytest.raises(InvalidInput):
        check_parameters([Parameter(name="p", type="int")], {"p": value})
