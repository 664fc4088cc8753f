"""Cost analysis (成本分析): where money goes to capacity nobody uses, with the cost at stake and
what to do about it.

- GPU dev environments idle for hours: the hub's ``last_activity`` of running servers (when the
  hub lets the control plane read server models), else GPU assignments of dev servers held long
  (their activity is unknown, said so);
- GPU assignments of this machine that no running job explains (a leak);
- inference services far below their target: requests in flight, averaged over the last window
  of the router's counters, compared with target_concurrency × ready replicas.

"Idle" uses the threshold of the alert rule ``gpu-idle`` (``monitoring.rules``), so the alerts
page and this analysis agree.
"""

from __future__ import annotations

import datetime as dt
import math

from pydantic import BaseModel, Field

from ..caller import Caller
from ..i18n import N_, translations
from ..monitoring.rules import rule
from ..monitoring.state import Snapshot

# inference services: utilisation below this share of target × replicas over the window is waste
DEPLOYMENT_UTILISATION = 0.10
DEPLOYMENT_WINDOW_SECONDS = 3600
# the history must cover at least this much of the window before a deployment is judged
DEPLOYMENT_MIN_COVERAGE = 0.5


class WasteItem(BaseModel):
    kind: str = Field(description="idle-dev-environment | gpu-held | gpu-orphan | "
                                  "over-provisioned-deployment")
    user: str
    target: str = Field(description="the server (USER/NAME), holder or deployment")
    profile: str | None
    gpus: int
    idle_seconds: float | None = Field(None, description="dev servers: since last activity")
    utilisation: float | None = Field(None, description="deployments: in flight ÷ (target × ready replicas)")
    replicas: float | None = None
    needed_replicas: int | None = None
    cost_at_stake: float = Field(description="spent on the unused part so far (idle time, or the window)")
    cost_per_day: float = Field(description="what keeps being spent per day on it if nothing changes")
    estimate: bool = Field(False, description="the price is an estimate (the profile is not known)")
    message: str
    action: str
    action_zh: str
    link: str | None = None


class WasteReport(BaseModel):
    generated_at: dt.datetime
    items: list[WasteItem]
    total_cost_at_stake: float
    total_cost_per_day: float
    idle_threshold_seconds: float
    deployment_window_seconds: int
    deployment_utilisation_threshold: float
    notes: list[str]


STOP_SERVER = N_("Stop it when you are done (Hub → Stop My Server); save work first. Run long "
                 "training as a training job instead.")
ORPHAN = N_("The next GPU allocation reclaims it once its process is gone; if it stays, an admin "
            "checks the process of this machine that holds the GPU.")


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def analyse(snapshot: Snapshot, caller: Caller, language: str = "en") -> WasteReport:
    """The findings, with ``message`` and ``action`` in ``language`` (the API: English) and
    ``action_zh`` in Chinese, all from the one catalogue."""
    _ = translations(language).gettext
    zh = translations("zh_CN").gettext
    idle_after = rule("gpu-idle").threshold
    mine = (lambda user: True) if caller.admin else (lambda user: user == caller.name)
    items: list[WasteItem] = []
    notes: list[str] = []
    s = snapshot

    for server in s.servers:
        if not server.gpus or not mine(server.user):
            continue
        seen = server.last_activity or server.started
        if seen is None:
            continue
        idle = (s.now - seen).total_seconds()
        if idle < idle_after:
            continue
        price = server.price_per_hour or 0.0
        name = f"{server.user}/{server.name}"
        known = server.last_activity is not None
        items.append(WasteItem(
            kind="idle-dev-environment" if known else "gpu-held", user=server.user, target=name,
            profile=server.profile, gpus=server.gpus, idle_seconds=idle if known else None,
            cost_at_stake=idle / 3600 * price, cost_per_day=24 * price,
            estimate=server.profile is None,
            message=(_("Dev environment {name} holds {gpus} GPU(s) and has been idle for "
                       "{idle}.") if known else
                     _("Dev environment {name} has held {gpus} GPU(s) for {idle}; its activity "
                       "is not known to the control plane.")).format(
                name=name, gpus=server.gpus, idle=hours(idle)),
            action=_(STOP_SERVER), action_zh=zh(STOP_SERVER),
            link="/hub/home"))

    for holder in s.holders:
        if holder.kind != "orphan" or not mine(holder.user):
            continue
        held = holder.idle_seconds or 0.0
        if held < idle_after:
            continue
        per_gpu = min((p.price_per_hour / p.gpu for p in s.catalog.profiles if p.gpu), default=0.0)
        items.append(WasteItem(
            kind="gpu-orphan", user=holder.user, target=holder.holder, profile=None,
            gpus=holder.gpus, idle_seconds=held, cost_at_stake=held / 3600 * per_gpu * holder.gpus,
            cost_per_day=24 * per_gpu * holder.gpus, estimate=True,
            message=_("{gpus} GPU(s) are assigned to {holder}, which is not running, for "
                      "{held}.").format(gpus=holder.gpus, holder=holder.holder, held=hours(held)),
            action=_(ORPHAN), action_zh=zh(ORPHAN)))

    window = DEPLOYMENT_WINDOW_SECONDS
    young = []
    for d in s.deployments:
        if not mine(d.owner) or d.status == "stopped" or not d.replicas:
            continue
        w = s.history.window(d.name, window, s.now)
        if w.covered_seconds < DEPLOYMENT_MIN_COVERAGE * window or w.mean_ready_replicas <= 0:
            young.append(d.name)
            continue
        capacity = d.target_concurrency * w.mean_ready_replicas
        utilisation = w.mean_in_flight / capacity if capacity else 0.0
        if utilisation >= DEPLOYMENT_UTILISATION:
            continue
        needed = max(math.ceil(w.mean_in_flight / d.target_concurrency - 1e-9), 1)
        excess = max(w.mean_ready_replicas - needed, 0.0)
        idle_share = 1 - utilisation
        cost_window = w.mean_ready_replicas * d.price_per_hour * w.covered_seconds / 3600
        if excess <= 0 and d.min_replicas <= 1:
            advice = N_("Nothing is served: stop the service while it is not needed "
                        "(fermi deployments stop {name}) and start it again later.")
            per_day = 24 * d.price_per_hour * w.mean_ready_replicas * idle_share
        else:
            advice = N_("Lower minReplicas to {needed} (fermi deployments scale {name} --min "
                        "{needed}) or raise target_concurrency; the autoscaler adds replicas "
                        "when traffic comes.")
            per_day = 24 * d.price_per_hour * excess
        items.append(WasteItem(
            kind="over-provisioned-deployment", user=d.owner, target=d.name, profile=d.profile,
            gpus=d.gpus, utilisation=utilisation, replicas=w.mean_ready_replicas,
            needed_replicas=needed, cost_at_stake=cost_window * idle_share, cost_per_day=per_day,
            message=_("Inference service {name} averaged {in_flight:.2f} requests in flight "
                      "over {window} for a capacity of {capacity:g} ({target:g} × {replicas:.1f} "
                      "replicas): {used:.0%} used.").format(
                name=d.name, in_flight=w.mean_in_flight, window=hours(w.covered_seconds),
                capacity=capacity, target=d.target_concurrency, replicas=w.mean_ready_replicas,
                used=utilisation),
            action=_(advice).format(name=d.name, needed=needed),
            action_zh=zh(advice).format(name=d.name, needed=needed)))
    if young:
        notes.append(_("Not judged yet (less than {minutes:.0f} min of traffic history since "
                       "the control plane started): {names}.").format(
            minutes=DEPLOYMENT_MIN_COVERAGE * window / 60, names=", ".join(young)))
    if s.servers_note:
        notes.append(s.servers_note)
    items.sort(key=lambda i: -i.cost_per_day)
    return WasteReport(
        generated_at=s.now, items=items,
        total_cost_at_stake=math.fsum(i.cost_at_stake for i in items),
        total_cost_per_day=math.fsum(i.cost_per_day for i in items),
        idle_threshold_seconds=idle_after, deployment_window_seconds=window,
        deployment_utilisation_threshold=DEPLOYMENT_UTILISATION, notes=notes)
