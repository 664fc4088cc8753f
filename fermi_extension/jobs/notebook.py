"""Checks on a submitted notebook: valid nbformat, runnable by papermill, not too large."""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidInput, TooLarge

MAX_NOTEBOOK_BYTES = 16 * 1024 * 1024


def load_notebook(notebook: Any, *, max_bytes: int = MAX_NOTEBOOK_BYTES) -> dict:
    """Validate ``notebook`` (a dict or a JSON string) and return it as nbformat 4 JSON."""
    import nbformat

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
    try:
        node = nbformat.from_dict(notebook)
        if node.nbformat != 4:
            node = nbformat.convert(node, 4)
        nbformat.validate(node)
    except nbformat.ValidationError as error:
        raise InvalidInput(f"The notebook is not valid nbformat: {error.message}.") from None
    except Exception as error:  # nbformat raises several kinds for broken documents
        raise InvalidInput(f"The notebook is not valid nbformat: {error}.") from None
    return json.loads(json.dumps(node))


def _too_large(size: int, limit: int) -> str:
    return (
        f"The notebook is {_size(size)}, over the {_size(limit)} limit: clear its "
        "outputs (Edit → Clear Outputs of All Cells) and keep data in files, not in the notebook."
    )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"
