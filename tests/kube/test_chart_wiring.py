"""The chart's pieces connect: what hub_config/helm/values.yaml and extras.yaml say, played the
way the Zero to JupyterHub chart plays them (its ``hub.services`` become
``c.JupyterHub.services``; ``extraConfig`` runs in jupyterhub_config.py with ``hub.extraEnv`` in
the environment). No cluster here: this reads the files and runs the config code."""

from __future__ import annotations

import os
from types import SimpleNamespace
from urllib.parse import urlparse

import yaml

from fermi_extension.paths import shipped

HELM = shipped("hub_config") / "helm"


def chart():
    values = yaml.safe_load((HELM / "values.yaml").read_text())
    extras = [o for o in yaml.safe_load_all((HELM / "extras.yaml").read_text()) if o]
    return values, extras


def played_services(values, monkeypatch) -> dict[str, dict]:
    """``c.JupyterHub.services`` after the chart's extraConfig ran, by name."""
    for name, value in values["hub"]["extraEnv"].items():
        if isinstance(value, str):  # valueFrom entries are the kubelet's to fill
            monkeypatch.setenv(name, value)
    services = [{"name": name, **spec} for name, spec in values["hub"]["services"].items()]
    c = SimpleNamespace(JupyterHub=SimpleNamespace(services=services),
                        FermiKubeSpawner=SimpleNamespace(), KubeSpawner=SimpleNamespace())
    for code in values["hub"]["extraConfig"].values():
        exec(compile(code, "extraConfig", "exec"), {"c": c, "os": os})
    return {s["name"]: s for s in c.JupyterHub.services}


def test_pods_reach_mlflow_only_through_the_control_planes_tracking_proxy(monkeypatch):
    values, extras = chart()
    services = played_services(values, monkeypatch)
    # MLflow listens on the hub pod's loopback (its default), reached by no Service or policy
    tracking = services["tracking"]["command"]
    assert "--host" not in tracking and tracking[tracking.index("--port") + 1] == "5000"
    assert not [o for o in extras if o["kind"] == "Service"
                and 5000 in [p["targetPort"] for p in o["spec"]["ports"]]]
    assert {p["port"] for p in values["hub"]["service"]["extraPorts"]} == {10101}
    assert {p["port"] for rule in values["hub"]["networkPolicy"]["ingress"]
            for p in rule["ports"]} == {10101}
    # pods are pointed at the control plane's Service, at the port the control plane listens
    # on, under its service prefix's tracking proxy
    pods_see = urlparse(values["hub"]["extraEnv"]["FERMI_KUBE_TRACKING_URI"])
    control_plane = next(o for o in extras if o["metadata"]["name"] == pods_see.hostname)
    (port,) = control_plane["spec"]["ports"]
    listens = urlparse(services["fermi"]["url"])
    assert pods_see.port == port["port"] and port["targetPort"] == listens.port
    assert pods_see.path == "/services/fermi/tracking"
    # the two services share the secret the proxy signs callers with, and only they get it
    secret = services["fermi"]["environment"]["FERMI_TRACKING_SECRET"]
    assert len(secret) >= 32 and services["tracking"]["environment"][
        "FERMI_TRACKING_SECRET"] == secret
    assert "FERMI_TRACKING_SECRET" not in values["singleuser"].get("extraEnv", {})


def test_the_control_plane_listens_on_the_pods_addresses_the_hub_reaches_it_at(monkeypatch):
    """The hub's proxy reaches the service at http://hub:10101, the hub Service's name, which
    is no address of the pod to listen on: the chart has it listen on all of them."""
    from fermi_extension.control_plane.app import FermiService

    values, _ = chart()
    services = played_services(values, monkeypatch)
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", services["fermi"]["url"])
    assert FermiService().ip == "0.0.0.0"
    monkeypatch.delenv("FERMI_SERVICE_IP")  # the embedded default: the URL's own host
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")
    assert FermiService().ip == "127.0.0.1"
