"""The notebook templates shipped with Fermi (模板市场: ``notebooks/templates/``)."""

from __future__ import annotations

import json

from .paths import shipped


def template_catalogue() -> list[dict]:
    """Each template with its ``fermi`` metadata: title and description in English and Chinese,
    tags, the suggested profile. Read on each call: an edited template shows at once."""
    found = []
    for path in sorted(shipped("templates").glob("*.ipynb")):
        try:
            meta = json.loads(path.read_text()).get("metadata", {}).get("fermi", {})
        except ValueError:
            continue
        found.append({"name": path.stem, "file": path.name, **meta})
    return found


def lab_link(name: str) -> str:
    """A link that opens the user's lab and makes a notebook from the template there."""
    return f"/hub/user-redirect/lab?fermi-template={name}"
