"""Parameters of a notebook: detected from the cell tagged ``parameters`` (papermill's convention).

Each plain assignment of a literal in that cell is a parameter; its type comes from the annotation
when there is one, else from the default. Submitted values are checked against those types so
that a typo fails at submission with a sentence naming the parameter, not an hour into the run.
"""

from __future__ import annotations

import ast
from typing import Any

from pydantic import BaseModel

from ..errors import InvalidInput

TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}
ANNOTATIONS = {"bool": "bool", "int": "int", "float": "float", "str": "str", "list": "list",
               "dict": "dict", "List": "list", "Dict": "dict"}


class Parameter(BaseModel):
    name: str
    type: str  # bool | int | float | str | list | dict | any
    default: Any = None
    help: str = ""


def parameters_cell(notebook: dict) -> dict | None:
    for cell in notebook.get("cells", []):
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") == "code" and "parameters" in tags:
            return cell
    return None


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def detect_parameters(notebook: dict) -> list[Parameter]:
    """The parameters of ``notebook`` in the order they appear (empty if it has no such cell)."""
    cell = parameters_cell(notebook)
    if cell is None:
        return []
    source = _source(cell)
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise InvalidInput(
            f"The parameters cell is not valid Python (line {error.lineno}: {error.msg}); "
            "fix it so that each parameter is a plain assignment such as `learning_rate = 0.1`."
        ) from None
    lines = source.splitlines()
    found: list[Parameter] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, annotation = node.targets[0], None
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, annotation = node.target, node.annotation
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        try:
            default = ast.literal_eval(node.value)
        except (ValueError, SyntaxError):
            default = None
            kind = "any"
        else:
            kind = TYPE_NAMES.get(type(default), "any")
        if annotation is not None:
            kind = ANNOTATIONS.get(ast.unparse(annotation), kind)
        line = lines[node.lineno - 1] if node.lineno - 1 < len(lines) else ""
        comment = _comment(line)
        found = [p for p in found if p.name != target.id]
        found.append(Parameter(name=target.id, type=kind, default=default, help=comment))
    return found


def _comment(line: str) -> str:
    """The comment at the end of ``line`` (a '#' inside a string is not one)."""
    import io
    import tokenize

    try:
        for token in tokenize.generate_tokens(io.StringIO(line).readline):
            if token.type == tokenize.COMMENT:
                return token.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return ""


def _conforms(value: Any, kind: str) -> bool:
    if kind == "any" or value is None:
        return True
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list)
    if kind == "dict":
        return isinstance(value, dict)
    return True


def check_parameters(declared: list[Parameter], values: dict[str, Any]) -> dict[str, Any]:
    """Return ``values`` if each names a declared parameter with a value of its type."""
    by_name = {p.name: p for p in declared}
    for name, value in values.items():
        parameter = by_name.get(name)
        if parameter is None:
            known = ", ".join(by_name) or "none: add a cell tagged `parameters`"
            raise InvalidInput(
                f"Unknown parameter {name!r}: the notebook's parameters cell declares {known}."
            )
        if not _conforms(value, parameter.type):
            raise InvalidInput(
                f"Parameter {name!r} must be of type {parameter.type} (its default is "
                f"{parameter.default!r}); got {type(value).__name__} {value!r}."
            )
    return dict(values)


def coerce_text(parameter: Parameter | None, text: str) -> Any:
    """Turn a command-line value into the parameter's type (``-p epochs 10`` → 10)."""
    import yaml

    kind = parameter.type if parameter else "any"
    if kind == "str":
        return text
    if kind in ("int", "float"):  # before YAML, which reads 1e-3 as a string
        for number in (int, float) if kind == "int" else (float,):
            try:
                return number(text)
            except ValueError:
                pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
