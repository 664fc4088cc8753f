"""Every notebook template is submittable as it is and describes itself for "new from template".

The lab's and the dashboard's template pickers read ``metadata.fermi``: a title and a description
in English and Chinese, tags and the profile to run on. The job form reads the ``parameters`` cell.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from fermi_extension.jobs.notebook import load_notebook
from fermi_extension.jobs.parameters import detect_parameters, parameters_cell

TEMPLATES = Path(__file__).resolve().parents[2] / "notebooks" / "templates"
PATHS = sorted(TEMPLATES.glob("*.ipynb"))
CHINESE = re.compile(r"[\u4e00-\u9fff]")


def test_the_expected_templates_are_there():
    assert {p.stem for p in PATHS} >= {
        "tabular-classifier", "pytorch-image-classifier", "llm-lora-finetune",
        "evaluate-model", "batch-inference",
    }


@pytest.fixture(params=PATHS, ids=[p.stem for p in PATHS])
def template(request) -> tuple[Path, dict]:
    return request.param, json.loads(request.param.read_text(encoding="utf-8"))


def test_is_valid_and_accepted_by_the_job_api(template):
    path, notebook = template
    nbformat.validate(nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))
    assert load_notebook(notebook) == notebook
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


def test_is_stored_clean(template):
    _, notebook = template
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_has_typed_commented_parameters(template):
    _, notebook = template
    assert parameters_cell(notebook) is not None
    parameters = detect_parameters(notebook)
    assert parameters
    for parameter in parameters:
        assert parameter.type != "any", parameter
        assert parameter.help, f"{parameter.name} has no comment"


def test_starts_with_a_bilingual_introduction(template):
    _, notebook = template
    first = notebook["cells"][0]
    assert first["cell_type"] == "markdown"
    text = "".join(first["source"])
    assert text.startswith("# ") and CHINESE.search(text.splitlines()[0])
    assert "parameters" in text


def test_fermi_metadata_in_both_languages(template):
    _, notebook = template
    fermi = notebook["metadata"]["fermi"]
    for key in ("title", "description"):
        assert set(fermi[key]) == {"en", "zh"}, key
        assert fermi[key]["en"].strip() and not CHINESE.search(fermi[key]["en"])
        assert CHINESE.search(fermi[key]["zh"])
    assert fermi["tags"] and all(isinstance(t, str) and t for t in fermi["tags"])
    assert fermi["profile"] == "cpu-small"


def test_templates_have_distinct_titles():
    titles = [json.loads(p.read_text())["metadata"]["fermi"]["title"]["en"] for p in PATHS]
    assert len(set(titles)) == len(titles)


def test_profile_exists_in_the_shipped_catalog():
    import yaml

    catalog = yaml.safe_load((TEMPLATES.parents[1] / "hub_config" / "catalog.yaml").read_text())
    slugs = {p["slug"] for p in catalog["profiles"]}
    for path in PATHS:
        assert json.loads(path.read_text())["metadata"]["fermi"]["profile"] in slugs, path.name
