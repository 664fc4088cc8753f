"""The dashboard (仪表盘): ``GET /api/dashboard`` (JSON) and the HTML of the home page
(``pages.HomeHandler``), both from ``monitoring.overview.build`` so they show the same figures.
The page also shows the cost analysis (``usage.waste``) and, for admins, the alert count.
"""

from __future__ import annotations

import asyncio
import html
import logging

from ..monitoring.overview import Dashboard, build
from ..usage.waste import WasteReport, analyse
from .base import APIHandler, operation

log = logging.getLogger("fermi.api")

MODELS_TIMEOUT = 3.0  # seconds the dashboard waits for the model repository (MLflow)


async def models_for(settings, caller) -> tuple[list, str | None]:
    registry = settings.get("registry")
    if registry is None:
        return [], None
    try:
        return await asyncio.wait_for(registry.list(caller), MODELS_TIMEOUT), None
    except Exception as error:  # the dashboard shows the rest when the tracking server is slow
        log.warning("dashboard: models not listed: %s", error)
        return [], "The model repository did not answer in time; try again or use `fermi models list`."


async def dashboard_for(handler: APIHandler) -> tuple[Dashboard, WasteReport]:
    settings, caller = handler.settings, handler.caller
    monitor = settings["monitor"]
    snapshot = await monitor.snapshot()
    models, note = await models_for(settings, caller)
    firing = monitor.evaluator.evaluate(snapshot).firing if caller.admin else 0
    dashboard = build(snapshot, caller, settings["usage"], settings["prefix"], models=models,
                      models_note=note, alerts_firing=firing)
    return dashboard, analyse(snapshot, caller)


class DashboardHandler(APIHandler):
    @operation("The dashboard's figures: quick-create entries, your dev environments, jobs, "
               "inference services and models, GPU pool use, this month's cost; admins also "
               "pools, queues, failing work and usage by user × profile × GPUs", response=Dashboard)
    async def get(self):
        dashboard, _ = await dashboard_for(self)
        self.send(dashboard)


routes = [("/api/dashboard", DashboardHandler)]


# -- the HTML page -------------------------------------------------------------------------------

STYLE = """
.layout { display: grid; grid-template-columns: 13rem 1fr; gap: 1.2rem; }
nav.side { font-size: .9rem; } nav.side h3 { font-size: .8rem; color: var(--muted); margin: 1rem 0 .3rem; }
nav.side a { display: block; padding: .15rem 0; color: inherit; text-decoration: none; }
nav.side a:hover { color: var(--accent); } nav.side a.here { font-weight: 600; color: var(--accent); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(15rem, 1fr)); gap: .8rem;
  margin: 0 0 1.2rem; }
.card { border-radius: .6rem; padding: .8rem 1rem; color: #fff; }
.card a { color: #fff; font-weight: 600; }
.card code, .guide code { background: rgba(0,0,0,.25); color: #fff; }
.card.dev { background: linear-gradient(90deg, #2563eb, #7c3aed); }
.card.job { background: linear-gradient(90deg, #16a34a, #2563eb); }
.card.inference { background: linear-gradient(90deg, #f97316, #dc2626); }
.figures { display: flex; gap: 1.5rem; flex-wrap: wrap; } .figure b { font-size: 1.4rem; display: block; }
.empty { color: var(--muted); font-style: italic; }
.bar { background: #e5e7eb; border-radius: .3rem; height: .6rem; width: 10rem; display: inline-block; }
.bar span { display: block; height: 100%; background: var(--accent); border-radius: .3rem; }
.status-failed { color: var(--bad); } .status-running, .status-ready { color: var(--ok); }
code { background: #f3f4f6; padding: 0 .25rem; border-radius: .2rem; }
@media (max-width: 50rem) { .layout { grid-template-columns: 1fr; } }
"""


def e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def money(amount: float | None) -> str:
    return "—" if amount is None else f"{amount:,.2f}"


def when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "—"


def table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{empty}</p>'
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def sidebar(prefix: str, admin: bool, here: str) -> str:
    """The seed's sidebar (侧边栏), with the modules this platform has."""
    def link(href, label, key):
        return f'<a href="{e(href)}"{" class=here" if key == here else ""}>{label}</a>'
    parts = ["<nav class=side>", "<h3>总览 Overview</h3>", link(prefix, "仪表盘 Dashboard", "home"),
             "<h3>AI工作负载 Workloads</h3>", link("/hub/home", "开发环境 Dev environments", "dev"),
             link("/hub/user-redirect/lab", "训练任务 Training jobs", "jobs"),
             link(f"{prefix}api/deployments", "推理服务 Inference services", "deployments"),
             "<h3>数据资产 Data assets</h3>", link(f"{prefix}images", "镜像管理 Images", "images"),
             link(f"{prefix}api/models", "模型仓库 Models", "models"),
             "<h3>系统管理 Administration</h3>",
             link(f"{prefix}#billing", "计费管理 Billing", "billing"),
             link(f"{prefix}audit", "审计日志 Audit log", "audit")]
    if admin:
        parts += [link(f"{prefix}alerts", "监控告警 Alerts", "alerts"),
                  link(f"{prefix}admin/catalog", "目录管理 Catalogue", "catalog"),
                  link("/hub/admin", "用户与权限 Users", "users")]
    parts += [link(f"{prefix}guide", "使用指南 Guide", "guide"), "</nav>"]
    return "".join(parts)


def pool_rows(pools) -> list[list[str]]:
    rows = []
    for p in pools:
        share = p.gpus_allocated / p.gpus if p.gpus else 0
        gpus = (f'{p.gpus_allocated} / {p.gpus} <span class="bar"><span style="width:'
                f'{min(share, 1) * 100:.0f}%"></span></span>' if p.gpus else "CPU")
        rows.append([f"{e(p.name)} <code>{e(p.slug)}</code>", gpus, str(p.gpus_mine),
                     f"{p.running_jobs} / {p.max_running_jobs}", str(p.queued_jobs)])
    return rows


def render(d: Dashboard, waste: WasteReport, prefix: str) -> str:
    cards = "".join(
        f'<div class="card {cls}"><b>{e(q.title_zh)} / {e(q.title)}</b><br>{e(q.description_zh)}'
        f'<br>{e(q.description)}<br><a href="{e(q.href)}">{e(q.link_text)} →</a>'
        + (f"<br><code>{e(q.cli)}</code>" if q.cli else "") + "</div>"
        for q, cls in zip(d.quick_create, ("dev", "job", "inference")))

    env = d.environments
    env_table = table(
        ["Name / 名称", "Profile / 规格", "GPUs", "Started / 启动", "Last activity / 最近活动",
         "Cost so far / 已产生费用"],
        [[f'<a href="{e(s.url)}">{e(s.name or "(default)")}</a>' if s.url else e(s.name),
          e(s.profile or "?"), str(s.gpus), when(s.started), when(s.last_activity),
          money(s.cost_so_far)] for s in env.items],
        'No running dev environment. 当前没有运行中的开发环境 — '
        '<a href="/hub/spawn">start one / 创建</a>.')
    if env.note:
        env_table += f'<p class="hint">{e(env.note)}</p>'

    counts = " · ".join(f"{e(k)} {v}" for k, v in d.jobs.counts.items())
    jobs_table = table(
        ["Job / 任务", "Status / 状态", "Profile / 规格", "Created / 创建", "Reason / 原因"],
        [[f'<a href="{prefix}api/jobs/{e(j.id)}">{e(j.name)}</a> <code>{e(j.id)}</code>',
          f'<span class="status-{e(j.status)}">{e(j.status)}</span>', e(j.profile),
          when(j.created_at), e(j.reason or "")] for j in d.jobs.recent],
        "No training job yet. 还没有训练任务 — submit a notebook from the lab "
        "(Submit as training job / 提交为训练任务).")
    dep_table = table(
        ["Service / 服务", "Status / 状态", "Replicas ready / 就绪副本", "Bounds / 范围",
         "Profile / 规格"],
        [[f'<a href="{prefix}api/deployments/{e(x.name)}">{e(x.name)}</a>',
          f'<span class="status-{e(x.status)}">{e(x.status)}</span>',
          f"{x.ready_replicas} / {x.desired_replicas}", f"{x.min_replicas}–{x.max_replicas}",
          e(x.profile)] for x in d.deployments],
        "No inference service. 还没有推理服务 — deploy a model below. 可从下方模型部署。")
    models = table(["Model / 模型", "Latest version / 最新版本", "Deploy / 部署"],
                   [[e(m.name), e(m.latest_version or "—"), f"<code>{e(m.deploy)}</code>"]
                    for m in d.models],
                   "No model yet: a training job registers one with MLflow. "
                   "还没有模型：训练任务通过 MLflow 注册模型。")
    if d.models_note:
        models += f'<p class="hint">{e(d.models_note)}</p>'
    pools = table(["Pool / 资源池", "GPUs allocated / 已分配", "Mine / 我的", "Jobs running / 运行",
                   "Queued / 排队"], pool_rows(d.pools), "No pool. 没有资源池。")

    c = d.cost
    kinds = " · ".join(f"{e(k)} {money(v)}" for k, v in sorted(c.by_kind.items())) or "—"
    waste_rows = [[e(w.kind), e(w.user), e(w.target), e(w.message), money(w.cost_at_stake),
                   money(w.cost_per_day) + (" (est.)" if w.estimate else ""),
                   f"{e(w.action)}<br>{e(w.action_zh)}"] for w in waste.items]
    waste_html = table(["Kind / 类型", "User / 用户", "What / 对象", "Finding / 发现",
                        "Cost at stake / 浪费", "Per day / 每天", "Action / 建议"], waste_rows,
                       "Nothing wasted right now. 目前没有发现资源浪费。")
    for note in waste.notes:
        waste_html += f'<p class="hint">{e(note)}</p>'

    admin = ""
    if d.admin_view:
        a = d.admin_view
        alloc = table(
            ["Pool / 资源池", "Capacity / 容量", "Jobs / 任务", "Replicas / 副本",
             "Dev servers / 开发环境", "Orphans / 未释放", "Queued / 排队",
             "Oldest wait / 最久等待"],
            [[e(p.slug), f"{p.gpus} GPUs · {p.max_running_jobs} jobs",
              *(str(p.gpus_by_kind.get(k, 0)) for k in ("job", "replica", "server", "orphan")),
              str(p.queued_jobs), f"{p.oldest_wait_seconds / 60:.0f} min"] for p in a.pools],
            "No pool.")
        failing = table(["Job / 任务", "Owner / 用户", "Finished / 结束", "Reason / 原因"],
                        [[f'<a href="{prefix}api/jobs/{e(j.id)}">{e(j.name)}</a>', e(j.owner),
                          when(j.finished_at), e(j.reason or "")] for j in a.failing_jobs],
                        "No job failed in the last 7 days. 最近 7 天没有失败的任务。")
        failing_d = table(["Service / 服务", "Owner / 用户", "Status / 状态", "Reason / 原因"],
                          [[e(x.name), e(x.owner), e(x.status), e(x.reason or "")]
                           for x in a.failing_deployments],
                          "No failing inference service. 没有故障的推理服务。")
        usage = table(
            ["User / 用户", "For / 用途", "Profile / 规格", "GPUs", "Hours / 小时",
             "GPU hours / GPU 小时", "Cost / 费用", "Audit / 审计"],
            [[e(u.user), e(u.kind), e(u.profile), str(u.gpus), f"{u.seconds / 3600:.2f}",
              f"{u.gpu_hours:.2f}", money(u.cost), f'<a href="{e(u.audit)}">audit log</a>']
             for u in a.usage],
            "No usage this month yet. 本月还没有用量。")
        alerts = (f'<a href="{prefix}alerts">{a.alerts_firing} alert(s) firing / 条告警触发</a>'
                  if a.alerts_firing else f'<a href="{prefix}alerts">No alert firing / 无告警</a>')
        admin = f"""
<section><h2>Platform (admin) / 平台总览（管理员） <span class="muted">{alerts}</span></h2>
<h3>GPU capacity and allocation per pool / 各资源池 GPU 容量与分配</h3>{alloc}
<h3>Failing jobs / 失败的任务</h3>{failing}
<h3>Failing inference services / 故障的推理服务</h3>{failing_d}
<h3>Who used which GPUs for what, this month / 本月谁用了哪些 GPU、做什么、花了多少</h3>{usage}
<p class="muted">Total / 合计: {money(a.usage_total)} ·
<a href="{prefix}api/usage/totals?by=user&format=csv">CSV per user</a> ·
<a href="{prefix}api/usage/totals?by=group&format=csv">CSV per group / 按用户组</a> ·
<a href="{prefix}audit">Audit log / 审计日志</a></p></section>"""

    return f"""<div class="layout">{sidebar(prefix, d.admin, "home")}<div>
<p>Signed in as <b>{e(d.user)}</b>{' (admin / 管理员)' if d.admin else ''}. Quick create / 快捷创建:</p>
<div class="cards">{cards}</div>
<p>New from a template / 从模板新建: {" · ".join(
    f'<a href="{e(t.href)}">{e(t.title_zh)} / {e(t.title)}</a>' for t in d.templates)}</p>
<section><h2>My dev environments / 我的开发环境</h2>{env_table}</section>
<section><h2>My training jobs / 我的训练任务</h2><p class="muted">{counts}</p>{jobs_table}</section>
<section><h2>My inference services / 我的推理服务</h2>{dep_table}
<h3>Models / 模型仓库</h3>{models}</section>
<section><h2>GPU pools / GPU 资源池</h2>{pools}</section>
<section id="billing"><h2>This month's cost / 本月费用 ({e(c.month)})</h2>
<div class="figures"><div class="figure"><b>{money(c.total)}</b>total / 合计</div>
<div class="figure"><b>{money(c.billed)}</b>finished work / 已结束</div>
<div class="figure"><b>{money(c.accruing)}</b>running now / 运行中</div></div>
<p class="muted">By kind / 按类型: {kinds} ·
<a href="{prefix}api/usage?format=csv">usage CSV / 用量导出</a> ·
<a href="{prefix}api/usage/totals?by=month">per month / 按月</a> ·
preview a cost / 费用预估: <code>{prefix}api/usage/preview?profile=cpu-small&amp;hours=8</code></p>
<h3>Cost analysis / 成本分析</h3>{waste_html}</section>
{admin}
<p class="muted">API: <code>{prefix}api/</code> · <a href="{prefix}api/openapi.json">OpenAPI</a> ·
<a href="{prefix}api/dashboard">this page as JSON</a></p>
</div></div>"""
