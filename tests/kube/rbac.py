"""The hub pod's API calls as RBAC sees them, and what grants them.

Two parts of the hub pod call the API as its ServiceAccount ``hub``: the Fermi control plane
(its Kubernetes backends), whose rights the chart's ``hub_config/helm/rbac.yaml`` grants, and
JupyterHub's KubeSpawner (dev servers), whose rights Zero to JupyterHub's own hub Role grants.
The API stand-in (``simulator.py``) tells them apart, and from its own controllers', by the
bearer token: the backend's kubeconfig carries ``BACKEND_TOKEN``, KubeSpawner's
``SPAWNER_TOKEN``, the controllers and tests another. Each request of the backend is recorded
in ``RECORDED``, each of KubeSpawner's in ``SPAWNER_RECORDED`` (collectors for the whole test
session, fed by every ``FakeCluster``), as the authorizer would see it (``call_of``):

- GET of one object → ``get``; of a collection → ``list``; a watch (``watch`` true, as the
  stand-in reads it) → ``watch``;
  POST → ``create``; PATCH → ``patch``; PUT → ``update``; DELETE of one → ``delete``, of a
  collection → ``deletecollection``; a subresource is ``resource/subresource`` (``pods/log``);
- a GET outside any resource (``/apis/GROUP/VERSION``: whether Kueue or KServe is installed) is
  a non-resource URL. Kubernetes' default ClusterRole ``system:discovery``, bound to every
  authenticated user, allows GET of ``DISCOVERY``; the chart need not grant those.

``Grants.of_chart()`` reads ``hub_config/helm/rbac.yaml``: the Roles and ClusterRoles bound to
the hub's ServiceAccount; ``Grants.of_hub_role()`` is Zero to JupyterHub's hub Role
(``HUB_ROLE_RULES``). ``tests/kube/test_rbac.py`` checks the chart both ways; the session
fixture ``api_calls_granted`` (conftest) checks, at the end of any session that ran the stand-in,
that every call recorded anywhere in it was granted: the backend's by the chart, KubeSpawner's
by the hub Role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from fermi_extension.paths import shipped

BACKEND_TOKEN = "fermi-control-plane"  # the control plane's backends (granted by rbac.yaml)
SPAWNER_TOKEN = "jupyterhub-kubespawner"  # the hub's KubeSpawner (granted by the hub Role)
CHART_RBAC = shipped("hub_config") / "helm" / "rbac.yaml"
# Zero to JupyterHub's Role bound to the hub's ServiceAccount (jupyterhub/templates/hub/
# rbac.yaml; the same in its releases 2.0.0 through 4.2.0, which the chart installs)
HUB_ROLE_RULES = [
    {"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims", "secrets", "services"],
     "verbs": ["get", "watch", "list", "create", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "watch", "list"]},
]
SUBJECT = {"kind": "ServiceAccount", "name": "hub", "namespace": "fermi"}
# system:discovery's nonResourceURLs (Kubernetes 1.14+, bound to system:authenticated)
DISCOVERY = ("/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi",
             "/openapi/*", "/readyz", "/version", "/version/")


@dataclass(frozen=True, order=True)
class Call:
    """One resource request as the authorizer sees it (namespace None: cluster-scoped)."""

    verb: str
    group: str
    resource: str
    namespace: str | None

    def __str__(self) -> str:
        where = f"in namespace {self.namespace}" if self.namespace else "cluster-wide"
        return f"{self.verb} {self.resource}{'.' + self.group if self.group else ''} {where}"


def call_of(request) -> Call | str:
    """The RBAC call a request of the stand-in is (a kmock ``Request``), or its path when it
    names no resource (discovery)."""
    resource = request.resource
    method = str(getattr(request.method, "value", request.method)).upper()
    if resource is None or not resource.plural:
        return str(request.url.path)
    named = request.name is not None
    if method == "GET":
        verb = "watch" if request.action == "WATCH" else "get" if named else "list"
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update",
                "DELETE": "delete" if named else "deletecollection"}[method]
    plural = resource.plural + (f"/{request.subresource}" if request.subresource else "")
    return Call(verb, resource.group or "", plural, request.namespace)


def discovery_allows(path: str) -> bool:
    return any(path == p or (p.endswith("*") and path.startswith(p[:-1])) for p in DISCOVERY)


@dataclass
class Recorded:
    """What backends asked the API for, each call with one URL that made it."""

    calls: dict[Call, str] = field(default_factory=dict)
    non_resource: dict[str, str] = field(default_factory=dict)  # path → method
    checked: bool = False  # by the session fixture

    def add(self, request) -> None:
        call = call_of(request)
        if isinstance(call, Call):
            self.calls.setdefault(call, str(request.url.relative()))
        else:
            self.non_resource.setdefault(call, str(getattr(request.method, "value",
                                                           request.method)).upper())

    def update(self, other: "Recorded") -> None:
        for call, url in other.calls.items():
            self.calls.setdefault(call, url)
        self.non_resource.update(other.non_resource)


# the session's (test_rbac reads them; the conftests check them at the end)
RECORDED = Recorded()  # the backend's calls
SPAWNER_RECORDED = Recorded()  # KubeSpawner's


@dataclass
class Grants:
    """The rules bound to the hub's ServiceAccount: (namespace or None for all, rule)."""

    rules: list[tuple[str | None, dict]]

    @classmethod
    def of_chart(cls, path: Path = CHART_RBAC, subject: dict = SUBJECT) -> "Grants":
        objects = [o for o in yaml.safe_load_all(path.read_text()) if o]
        roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
                 for o in objects if o["kind"] in ("Role", "ClusterRole")}
        rules = []
        for binding in objects:
            if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding") or not any(
                    s.get("kind") == subject["kind"] and s.get("name") == subject["name"]
                    and s.get("namespace") == subject["namespace"]
                    for s in binding.get("subjects") or []):
                continue
            namespace = binding["metadata"].get("namespace") \
                if binding["kind"] == "RoleBinding" else None
            ref = binding["roleRef"]
            role = roles.get((ref["kind"], namespace if ref["kind"] == "Role" else None,
                              ref["name"]))
            for rule in (role or {}).get("rules") or []:
                rules.append((namespace, rule))
        return cls(rules)

    @classmethod
    def of_hub_role(cls, namespace: str = SUBJECT["namespace"]) -> "Grants":
        """Zero to JupyterHub's hub Role, bound in the release's ``namespace`` (a Role: nothing
        cluster-wide)."""
        return cls([(namespace, rule) for rule in HUB_ROLE_RULES])

    def allows(self, call: Call) -> bool:
        def has(values, value):
            return "*" in values or value in values

        return any((namespace is None or namespace == call.namespace)
                   and has(rule.get("apiGroups") or [], call.group)
                   and has(rule.get("resources") or [], call.resource)
                   and has(rule.get("verbs") or [], call.verb)
                   for namespace, rule in self.rules)

    def spelled_out(self) -> set[Call]:
        """Every call the rules grant by name (a wildcard is kept as ``*``)."""
        return {Call(verb, group, resource, namespace)
                for namespace, rule in self.rules
                for group in rule.get("apiGroups") or []
                for resource in rule.get("resources") or []
                for verb in rule.get("verbs") or []}


def ungranted(recorded: Recorded, grants: Grants) -> list[str]:
    """Each recorded call ``grants`` does not grant, with a URL that made it."""
    missing = [f"{call} (e.g. {url})" for call, url in sorted(recorded.calls.items())
               if not grants.allows(call)]
    missing += [f"{method} {path} (a non-resource URL that system:discovery does not allow)"
                for path, method in sorted(recorded.non_resource.items())
                if method != "GET" or not discovery_allows(path)]
    return missing


@pytest.fixture(scope="session", autouse=True)
def api_calls_granted():
    """At the end of the session: every call a backend made through the stand-in anywhere in
    it (``RECORDED``) is one the chart grants, and every call of KubeSpawner's
    (``SPAWNER_RECORDED``) one Zero to JupyterHub's hub Role grants (imported by the conftests
    of ``tests/kube`` and ``tests/conformance`` and by ``tests/containers/test_kube_play.py``;
    checked once, whichever ends last)."""
    yield RECORDED
    if RECORDED.checked:
        return
    RECORDED.checked = True
    missing = [f"hub_config/helm/rbac.yaml does not grant the control plane's {call}"
               for call in ungranted(RECORDED, Grants.of_chart())]
    missing += [f"Zero to JupyterHub's hub Role does not grant KubeSpawner's {call}"
                for call in ungranted(SPAWNER_RECORDED, Grants.of_hub_role())]
    assert not missing, "\n".join(missing)
