"""Checks on a submitted notebook: valid nbformat, runnable by papermill, not too large.

Validation uses nbformat's own JSON schemas through fastjsonschema, without importing nbformat:
its validator pulls in jsonschema (~2 s and ~30 MB in the control plane, FACTS.md).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, TooLarge

MAX_NOTEBOOK_BYTES = 16 * 1024 * 1024


def load_notebook(notebook: Any, *, max_bytes: int = MAX_NOTEBOOK_BYTES) -> dict:
    """Validate ``notebook`` (a dict or a JSON string) and return it as nbformat 4 JSON."""
    if isinstance(notebook, str):
        if len(notebook.encode()) > max_bytes:
            raise TooLarge(_too_large(len(notebook.encode()), max_bytes))
        try:
            notebook = json.loads(notebook)
        except json.JSONDecodeError as error:
            raise InvalidInput(f"The notebook is not valid JSON: {error}.") from None
    if not isinstance(notebook, dict):
        raise InvalidInput("`notebook` must be a Jupyter notebook (nbformat JSON object).")
    size = len(json.dumps(notebook))
    if size > max_bytes:
        raise TooLarge(_too_large(size, max_bytes))
    if "cells" not in notebook or "nbformat" not in notebook:
        raise InvalidInput(
            "`notebook` is not a Jupyter notebook: it needs `cells`, `metadata` and `nbformat`."
        )
    kernelspec = (notebook.get("metadata") or {}).get("kernelspec") or {}
    if not isinstance(kernelspec, dict) or not kernelspec.get("name"):
        raise InvalidInput(
            "The notebook has no kernel (metadata.kernelspec.name is missing): open it in "
            "JupyterLab, pick a kernel, save, and submit again."
        )
    if notebook.get("nbformat") != 4:
        notebook = _upgrade(notebook)
    import fastjsonschema

    try:
        _validator(int(notebook.get("nbformat_minor") or 0))(notebook)
    except fastjsonschema.JsonSchemaException as error:
        raise InvalidInput(
            f"The notebook is not valid nbformat: {error.message.replace('data', 'notebook', 1)}."
        ) from None
    return notebook


@functools.lru_cache(maxsize=None)
def _validator(minor: int):
    import fastjsonschema

    folder = Path(importlib.util.find_spec("nbformat").submodule_search_locations[0]) / "v4"
    path = folder / f"nbformat.v4.{minor}.schema.json"
    if not path.exists():
        path = folder / "nbformat.v4.schema.json"
    return fastjsonschema.compile(json.loads(path.read_text()))


def warm_up() -> None:
    """Compile the current schema ahead of the first submission."""
    _validator(5)


def _upgrade(notebook: dict) -> dict:
    """Notebooks older than nbformat 4 (rare): nbformat converts them."""
    import nbformat

    try:
        return json.loads(nbformat.writes(nbformat.convert(nbformat.from_dict(notebook), 4)))
    except Exception as error:  # nbformat raises several kinds for broken documents
        raise InvalidInput(f"The notebook is not valid nbformat: {error}.") from None


def _too_large(size: int, limit: int) -> str:
    return (
        f"The notebook is {_size(size)}, over the {_size(limit)} limit: clear its "
        "outputs (Edit → Clear Outputs of All Cells) and keep data in files, not in the notebook."
    )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"
