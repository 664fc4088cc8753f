"""Where the files that ship with Fermi are: ``hub_config/``, the notebook templates, the docs, the
official images' Dockerfiles.

In a wheel they are inside the package (``_shipped/``); in a source checkout (editable install)
they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPOSITORY = PACKAGE.parent
SOURCE_NAMES = {"hub_config": "hub_config", "templates": "notebooks/templates", "docs": "docs", "images": "images"}


def shipped(name: str) -> Path:
    """``shipped("hub_config")``, ``shipped("templates")``, ``shipped("docs")`` or
    ``shipped("images")`` (the official images' Dockerfiles)."""
    inside = PACKAGE / "_shipped" / name
    if inside.exists():
        return inside
    return REPOSITORY / SOURCE_NAMES[name]
