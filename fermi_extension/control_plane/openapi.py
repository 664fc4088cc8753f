"""The OpenAPI document, generated from the route tables and the pydantic models."""

from __future__ import annotations

import argparse
import json
import re
import sys

from pydantic.json_schema import models_json_schema

from ..errors import NotFound
from .base import APIHandler, Operation, operation

VERBS = ("get", "post", "patch", "put", "delete")


def tornado_pattern(template: str) -> str:
    """``/api/jobs/{job_id}`` → ``/api/jobs/(?P<job_id>[^/]+)``."""
    return re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "/?"


def build_openapi(routes: list[tuple[str, type]], base_url: str, version: str) -> dict:
    operations: list[tuple[str, str, Operation]] = []
    models = set()
    for template, handler in routes:
        for verb in VERBS:
            method = getattr(handler, verb, None)
            op = getattr(method, "__operation__", None)
            if op is None:
                continue
            operations.append((template, verb, op))
            models.update(m for m in (op.request, op.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    keys, schema = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    refs = {model: keys[(model, "validation")] for model in ordered}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict = {}
    for template, verb, op in operations:
        item: dict = {
            "summary": op.summary,
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in re.findall(r"\{(\w+)\}", template)
            ] + [
                {"name": name, "in": "query", "required": False, "description": text,
                 "schema": {"type": "string"}}
                for name, text in (op.query or {}).items()
            ],
            "responses": {
                str(op.status): {
                    "description": "OK",
                    "content": {
                        op.content_type or "application/json": {
                            "schema": refs[op.response] if op.response else {}
                        }
                    },
                },
                "400": {"description": "Invalid input: the message says what to fix", **error},
                "401": {"description": "No valid hub token or login", **error},
                "404": {"description": "Not found, or not yours", **error},
            },
        }
        if op.request is not None:
            item["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[op.request]}},
            }
        if op.admin:
            item["responses"]["403"] = {"description": "Admins only", **error}
        paths.setdefault(template.removeprefix("/api"), {})[verb] = item
    components = dict(schema.get("$defs", {}))
    components["Error"] = {
        "type": "object",
        "properties": {"message": {"type": "string"}},
        "required": ["message"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fermi control plane",
            "version": version,
            "description": "Authenticate with a JupyterHub API token: `Authorization: token <token>`.",
        },
        "servers": [{"url": base_url}],
        "components": {
            "schemas": components,
            "securitySchemes": {
                "hubToken": {"type": "apiKey", "in": "header", "name": "Authorization"}
            },
        },
        "security": [{"hubToken": []}],
        "paths": paths,
    }


class OpenAPIHandler(APIHandler):
    def prepare(self) -> None:  # the contract is public, like the hub's own REST docs
        pass

    def get(self):
        self.send(self.settings["openapi"])


class HealthHandler(APIHandler):
    def prepare(self) -> None:
        pass

    @operation("Liveness of the control plane (no authentication)")
    def get(self):
        self.send({"status": "ok"})


class NoRouteHandler(APIHandler):
    """Any other path under /api/: a JSON 404 naming what exists, for every verb, before any
    authentication (a path that exists for nobody says so to everybody)."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def prepare(self) -> None:
        raise NotFound(f"No API route {self.request.method} {self.request.path}; the routes are "
                       f"listed in {self.request.path.split('/api')[0]}/api/openapi.json.")


# The document the lab extension's types are generated from: fixed base URL and version, so the
# generated file changes only when the contract does, not at every release.
STABLE_BASE = "/services/fermi/api"
STABLE_VERSION = "contract"


def contract_json() -> str:
    from .app import ROUTES

    doc = build_openapi(ROUTES, STABLE_BASE, STABLE_VERSION)
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fermi_extension.control_plane.openapi",
        description="Write the control plane's OpenAPI document (JSON) to a file or stdout.",
    )
    parser.add_argument("-o", "--output", help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    text = contract_json()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
