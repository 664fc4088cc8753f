"""ipywidgets panels for use inside a notebook (Notebook 7, VS Code, classic workflows).

    from fermi_extension.widgets import SubmitPanel, JobWatcher, DeployPanel
    SubmitPanel("train.ipynb")            # typed parameters, image, profile → a training job
    JobWatcher("3f2a…")                    # live status, cell progress, log, metrics
    DeployPanel("wine-classifier", "2")    # promote a model version to an inference service

They call the same control-plane API as the lab panels and the CLI (``client.Client``, which
finds the platform and the user's token in the dev server's environment), so the server's
checks and messages are the same everywhere; a refused request shows the server's sentence.
Strings follow JupyterLab's language setting (``i18n.language``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as w

from .platform_client import APIError, Client
from .i18n import translate as _
from .jobs.parameters import Parameter, detect_parameters

ENDED = ("succeeded", "failed", "cancelled")


def parameter_input(parameter: Parameter) -> w.Widget:
    """A typed input for one parameter, holding its default."""
    label = dict(description=parameter.name, style={"description_width": "initial"})
    if parameter.type == "bool":
        return w.Checkbox(value=bool(parameter.default), **label)
    if parameter.type == "int":
        return w.IntText(value=int(parameter.default or 0), **label)
    if parameter.type == "float":
        return w.FloatText(value=float(parameter.default or 0), **label)
    if parameter.type == "str":
        return w.Text(value=str(parameter.default or ""), **label)
    return w.Text(value=json.dumps(parameter.default), placeholder="JSON", **label)


def parameter_value(parameter: Parameter, widget: w.Widget) -> Any:
    if parameter.type in ("bool", "int", "float", "str"):
        return widget.value
    try:
        return json.loads(widget.value)
    except ValueError:
        raise ValueError(_("Parameter {name}: {value!r} is not valid JSON.").format(
            name=parameter.name, value=widget.value)) from None


def profile_picker(client: Client) -> w.Dropdown:
    """The profiles offered to the user, with price and availability; the default chosen."""
    profiles = client.get("catalog/profiles")["profiles"]

    def label(profile: dict) -> str:
        text = f"{profile['name']} · {profile['price_per_hour']:g}/h"
        return text if profile.get("available", True) else f"{text} — {_('unavailable')}"

    default = next((p["slug"] for p in profiles if p.get("default")), profiles[0]["slug"])
    return w.Dropdown(options=[(label(p), p["slug"]) for p in profiles], value=default,
                      description=_("Profile"))


class JobWatcher(w.VBox):
    """A job's status, cell progress, metrics and log tail, refreshed while it runs."""

    def __init__(self, job_id: str, client: Client | None = None, interval: float = 1.0,
                 follow: bool = True):
        self.client = client or Client()
        self.job_id = job_id
        self.interval = interval
        self.status = w.HTML()
        self.progress = w.IntProgress(min=0, max=1, description=_("Cells"))
        self.metrics = w.HTML()
        self.log_view = w.Textarea(layout=w.Layout(width="100%", height="10em"), disabled=True)
        self.cancel_button = w.Button(description=_("Cancel"), button_style="warning")
        self.cancel_button.on_click(lambda _b: self.cancel())
        super().__init__([self.status, self.progress, self.metrics, self.log_view, self.cancel_button])
        self.job: dict = {}
        self._log_offset = 0
        self.refresh()
        if follow and self.job.get("status") not in ENDED:
            threading.Thread(target=self._follow, daemon=True).start()

    def refresh(self) -> dict:
        job = self.client.get(f"jobs/{self.job_id}")
        logs = self.client.get(f"jobs/{self.job_id}/logs", offset=self._log_offset)
        self._log_offset = logs["next_offset"]
        self.log_view.value = (self.log_view.value + logs["text"])[-20_000:]
        progress = job.get("progress") or {}
        self.progress.max = max(1, progress.get("cells_total") or 1)
        self.progress.value = min(self.progress.max, progress.get("cells_done") or 0)
        reason = f" — {job['reason']}" if job.get("reason") else ""
        self.status.value = (f"<b>{job['name']}</b> ({job['id']}): "
                             f"<code>{_(job['status'])}</code>{reason}")
        self.metrics.value = ", ".join(f"{k} = {v:.4g}" for k, v in (job.get("metrics") or {}).items())
        self.cancel_button.disabled = job["status"] in ENDED
        self.job = job
        return job

    def _follow(self) -> None:
        while self.job.get("status") not in ENDED:
            time.sleep(self.interval)
            try:
                self.refresh()
            except APIError:
                pass  # the control plane restarting: try again

    def wait(self, timeout: float = 600) -> dict:
        """Block until the job ends (for scripts and tests); returns the job."""
        deadline = time.monotonic() + timeout
        while self.refresh()["status"] not in ENDED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {self.job['status']} after {timeout} s")
            time.sleep(self.interval)
        return self.job

    def cancel(self) -> None:
        self.client.post(f"jobs/{self.job_id}/cancel")
        self.refresh()


class SubmitPanel(w.VBox):
    """Submit a notebook (as saved on disk) as a training job, with typed parameters."""

    def __init__(self, path: str | Path, client: Client | None = None):
        self.client = client or Client()
        self.path = Path(path)
        notebook = json.loads(self.path.read_text())
        self.declared = detect_parameters(notebook)
        self.parameters = {p.name: parameter_input(p) for p in self.declared}
        images = self.client.get("catalog/images")["images"]
        self.image = w.Dropdown(options=[(i["name"], i["slug"]) for i in images],
                                description=_("Image"))
        self.profile = profile_picker(self.client)
        self.name = w.Text(value=self.path.stem, description=_("Name"))
        self.priority = w.IntSlider(value=0, min=-100, max=100, description=_("Priority"))
        self.submit_button = w.Button(description=_("Submit as training job"),
                                      button_style="primary")
        self.submit_button.on_click(lambda _b: self.submit())
        self.message = w.HTML()
        self.watcher: JobWatcher | None = None
        self.job_id: str | None = None
        super().__init__([
            w.HTML(f"<b>{_('Submit as training job')}</b>: <code>{self.path.name}</code>"),
            *self.parameters.values(), self.image, self.profile, self.name, self.priority,
            self.submit_button, self.message,
        ])

    def values(self) -> dict[str, Any]:
        return {p.name: parameter_value(p, self.parameters[p.name]) for p in self.declared}

    def submit(self) -> str | None:
        """Submit; on success show a live JobWatcher and return the job id."""
        try:
            body = {
                "notebook": json.loads(self.path.read_text()),
                "notebook_name": self.path.name,
                "parameters": self.values(),
                "image": self.image.value, "profile": self.profile.value,
                "name": self.name.value or None, "priority": self.priority.value,
            }
            job = self.client.post("jobs", body)
        except (APIError, ValueError) as error:
            self.message.value = f"<span style='color:#c62828'>{getattr(error, 'message', error)}</span>"
            return None
        self.job_id = job["id"]
        self.message.value = _("Submitted: job {id}").format(id=job["id"])
        self.watcher = JobWatcher(job["id"], self.client)
        self.children = [*self.children, self.watcher]
        return job["id"]


class DeployPanel(w.VBox):
    """Promote a registered model version to an inference service."""

    def __init__(self, model: str, version: str | int, client: Client | None = None):
        self.client = client or Client()
        self.model, self.version = model, str(version)
        self.name = w.Text(value=model.lower().replace("_", "-")[:40], description=_("Name"))
        self.profile = profile_picker(self.client)
        self.min_replicas = w.BoundedIntText(value=1, min=1, max=20, description=_("Min replicas"))
        self.max_replicas = w.BoundedIntText(value=2, min=1, max=20, description=_("Max replicas"))
        self.target = w.BoundedFloatText(value=4, min=0.1, max=1000,
                                         description=_("Target concurrency"))
        self.deploy_button = w.Button(description=_("Deploy"), button_style="primary")
        self.deploy_button.on_click(lambda _b: self.deploy())
        self.message = w.HTML()
        self.deployment: dict | None = None
        super().__init__([
            w.HTML(f"<b>{_('Deploy')}</b>: <code>{model}</code> v{self.version}"),
            self.name, self.profile, self.min_replicas, self.max_replicas, self.target,
            self.deploy_button, self.message,
        ])

    def deploy(self) -> dict | None:
        try:
            self.deployment = self.client.post("deployments", {
                "name": self.name.value, "model": self.model, "version": self.version,
                "profile": self.profile.value, "min_replicas": self.min_replicas.value,
                "max_replicas": self.max_replicas.value,
                "target_concurrency": self.target.value,
            })
        except APIError as error:
            self.message.value = f"<span style='color:#c62828'>{error.message}</span>"
            return None
        key = self.deployment.get("api_key")
        self.message.value = (_("Deployed at {url}").format(url=self.deployment["url"])
                              + (f"<br>{_('API key (shown once)')}: <code>{key}</code>" if key else ""))
        return self.deployment

    def wait_ready(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            deployment = self.client.get(f"deployments/{self.name.value}")
            if deployment["status"] in ("ready", "failed") or time.monotonic() > deadline:
                self.deployment = deployment
                return deployment
            time.sleep(1)
