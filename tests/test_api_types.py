"""The lab extension's API types are generated from the control plane's OpenAPI document.

A pydantic model changed without `jlpm build:api-types` leaves `labextension/src/api-types.ts`
describing an API that no longer exists; this test regenerates it with the same command the
package.json script runs and fails on any difference.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABEXTENSION = ROOT / "labextension"
GENERATED = LABEXTENSION / "src" / "api-types.ts"


def generator_options() -> list[str]:
    """The openapi-typescript options of the package.json script, so both stay one command."""
    script = json.loads((LABEXTENSION / "package.json").read_text())["scripts"]["build:api-types"]
    words = shlex.split(script.split("|", 1)[1])
    assert words[0] == "openapi-typescript"
    options = words[1:]
    out = options.index("--output")
    return options[:out] + options[out + 2:]


def test_generated_api_types_match_the_openapi_document(tmp_path):
    tool = LABEXTENSION / "node_modules" / ".bin" / "openapi-typescript"
    assert tool.exists(), "openapi-typescript is missing: run `jlpm install` in labextension/"
    document = subprocess.run([sys.executable, "-m", "fermi_extension.control_plane.openapi"],
                              capture_output=True, text=True, cwd=ROOT)
    assert document.returncode == 0, document.stderr
    fresh = tmp_path / "api-types.ts"
    generated = subprocess.run([str(tool), *generator_options(), "--output", str(fresh)],
                               input=document.stdout, capture_output=True, text=True,
                               cwd=LABEXTENSION)
    assert generated.returncode == 0, generated.stderr
    assert GENERATED.read_text() == fresh.read_text(), (
        "labextension/src/api-types.ts is stale: the control plane's models changed. "
        "Regenerate it with `cd labextension && jlpm build:api-types` and commit it."
    )

