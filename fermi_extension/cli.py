"""The `fermi` command: start the platform, and drive it from scripts and MLOps pipelines."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .i18n import translate as _

ENDED = ("succeeded", "failed", "cancelled")


def cmd_up(args) -> int:
    from .up import Platform

    return Platform(args.port, args.ip, args.data_dir, args.public_url, args.log_to_terminal,
                    serving_port=args.serving_port).run()


def cmd_db_upgrade(args) -> int:
    import logging
    from pathlib import Path

    from .db import current_revision, make_engine, platform_db_url, upgrade_if_needed

    url = args.db_url or platform_db_url(args.data_dir)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        print(f"Error: there is no platform database at {url[len('sqlite:///'):]}; give the data "
              "dir with --data-dir, or the database with --db-url.", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-connection chatter
    try:
        upgraded = upgrade_if_needed(url)
    except RuntimeError as error:  # a revision that cannot apply says why
        print(f"Error: {error}", file=sys.stderr)
        return 1
    with make_engine(url).connect() as connection:
        revision = current_revision(connection)
    print(f"The platform database is {'now ' if upgraded else ''}at schema revision {revision}"
          f"{'' if upgraded else ', already up to date'}.")
    return 0


@contextmanager
def _images_engine(data: Path, doing: str):
    """A client of this machine's container engine for the images commands (podman's service
    started in the data dir when none answers, and stopped afterwards); BuildFailed says why
    there is none."""
    from .containers.engine import connect, find_engine
    from .containers.images import BuildFailed

    isolation, service = find_engine(data / "containers")
    if not isolation.containers:
        raise BuildFailed(f"{doing} needs a container engine: {isolation.reason}.")
    client = connect(isolation.url, timeout=1800)
    try:
        yield client
    finally:
        client.close()
        if service is not None:
            service.stop()


def cmd_images_build(args) -> int:
    """Build official images with this machine's engine and pin their digests in the
    catalogue of the data dir (when it has a platform database)."""
    from .containers.images import OFFICIAL, PLATFORM, BuildFailed, build_official, record
    from .db import make_session_factory, platform_db_url

    data = Path(args.data_dir).resolve()
    names = args.names or list(PLATFORM)
    unknown = [n for n in names if n not in OFFICIAL]
    if unknown:
        print(f"Error: no official image {', '.join(unknown)}; there are: {', '.join(OFFICIAL)}",
              file=sys.stderr)
        return 2
    try:
        with _images_engine(data, "building images") as client:
            for name in names:
                # --base replaces the base of the catalogue's images; the platform images are
                # layers on the python image whatever base that one had
                base = args.base if OFFICIAL[name].slug else None
                built = build_official(client, name, data / "containers" / "cache", base=base)
                if built.slug and ((data / "fermi.sqlite").exists() or args.db_url):
                    record(make_session_factory(args.db_url or platform_db_url(data)), built)
                    print(f"Pinned {built.reference} as version {built.tag} of catalogue image "
                          f"{built.slug!r}.")
    except BuildFailed as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_images_push(args) -> int:
    """Push built official images to a registry; write their digests where a cluster install
    reads them (a chart overlay, kustomizations, and the catalogue with --db-url)."""
    from .containers.images import BuildFailed
    from .containers.push import (PushFailed, built_here, check_registry, pinned_seed, push,
                                  record_pushed, write_install)

    try:
        registry = check_registry(args.registry)
    except PushFailed as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    try:
        with _images_engine(Path(args.data_dir).resolve(), "pushing images") as client:
            pushed = [push(client, name, registry, insecure=args.insecure)
                      for name in built_here(client, args.names)]
        catalog = pinned_seed(pushed)
        values, extras, kserve = write_install(Path(args.out), registry, pushed, catalog)
        if args.db_url:
            record_pushed(args.db_url, pushed, catalog)
    except (PushFailed, BuildFailed) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    for built in pushed:
        print(f"Pushed {built.name}: {built.reference}")
    print(f"Wrote {values}: give it to helm after hub_config/helm/values.yaml "
          f"(--values hub_config/helm/values.yaml --values {values})")
    print(f"Wrote {extras.parent}/: kubectl apply -n fermi -k {extras.parent}")
    print(f"Wrote {kserve.parent}/: kubectl apply -k {kserve.parent} (where KServe is installed)")
    if args.db_url:
        print("Pinned the catalogue's images in the platform database of --db-url.")
    return 0


def _client(args):
    from .platform_client import Client

    return Client(api_url=args.url and args.url.rstrip("/") + "/services/fermi/api")


def _print_job(job: dict) -> None:
    print(f"{job['id']}  {job['name']}  {job['status']}  ({job['owner']}, {job['profile']}, "
          f"{job['image']})")
    if job.get("reason"):
        print(f"  reason: {job['reason']}")
    if job.get("queue_position"):
        print(f"  queue position: {job['queue_position']}")
    progress = job.get("progress") or {}
    if progress.get("cells_total"):
        print(f"  progress: {progress.get('cells_done', 0)}/{progress['cells_total']} cells")
    if job.get("parameters"):
        print("  parameters: " + ", ".join(f"{k}={v!r}" for k, v in job["parameters"].items()))
    if job.get("metrics"):
        print("  metrics: " + ", ".join(f"{k}={v:g}" for k, v in job["metrics"].items()))
    for model in job.get("models") or []:
        print(f"  registered model: {model['name']} version {model['version']}")
    if job.get("duration_seconds") is not None:
        print(f"  duration: {job['duration_seconds']:.1f} s")


def cmd_jobs_submit(args) -> int:
    from .jobs.parameters import coerce_text, detect_parameters

    path = Path(args.notebook)
    if not path.is_file():
        print(_("No such notebook: {path}").format(path=path), file=sys.stderr)
        return 2
    try:
        notebook = json.loads(path.read_text())
    except ValueError as error:
        print(f"{path} is not a notebook (invalid JSON: {error})", file=sys.stderr)
        return 2
    declared = {p.name: p for p in detect_parameters(notebook)}
    parameters = {name: coerce_text(declared.get(name), value) for name, value in args.parameter}
    if args.dry_run:
        from .backends.kubernetes.render import catalog_from, dump, render_job

        objects = render_job(path, parameters, catalog=catalog_from(args.catalog), image=args.image,
                             profile=args.profile, nodes=args.nodes, timeout_seconds=args.timeout)
        print(dump(objects, args.output), end="")
        return 0
    body = {"notebook": notebook, "notebook_name": path.name, "parameters": parameters,
            "profile": args.profile, "image": args.image, "name": args.name,
            "priority": args.priority, "timeout_seconds": args.timeout}
    client = _client(args)
    job = client.post("jobs", {k: v for k, v in body.items() if v is not None})
    print(_("Submitted job {id} ({name}): {status}").format(id=job["id"], name=job["name"],
                                                             status=_(job["status"])))
    if not args.wait:
        return 0
    return _follow(client, job["id"], show_logs=args.logs)


def _follow(client, job_id: str, show_logs: bool) -> int:
    offset, last = 0, None
    while True:
        job = client.get(f"jobs/{job_id}")
        if show_logs:
            logs = client.get(f"jobs/{job_id}/logs", offset=offset)
            sys.stdout.write(logs["text"])
            offset = logs["next_offset"]
        elif job["status"] != last:
            print(f"  {job['status']}", flush=True)
        last = job["status"]
        if job["status"] in ENDED:
            _print_job(job)
            return 0 if job["status"] == "succeeded" else 1
        time.sleep(0.5)


def cmd_jobs_list(args) -> int:
    result = _client(args).get("jobs", status=args.status, limit=args.limit, owner=args.owner)
    if not result["jobs"]:
        print(_("No jobs yet. Submit one: fermi jobs submit NOTEBOOK.ipynb [-p NAME VALUE]"))
        return 0
    for job in result["jobs"]:
        print(f"{job['id']}  {job['status']:<9}  {job['name']:<30}  {job['owner']:<12} {job['created_at']}")
    if result["total"] > len(result["jobs"]):
        print(f"({len(result['jobs'])} of {result['total']}; use --limit)")
    return 0


def cmd_jobs_show(args) -> int:
    job = _client(args).get(f"jobs/{args.job_id}")
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        _print_job(job)
    return 0


def cmd_jobs_logs(args) -> int:
    client = _client(args)
    if args.follow:
        return _follow(client, args.job_id, show_logs=True)
    sys.stdout.write(client.get(f"jobs/{args.job_id}/logs")["text"])
    return 0


def cmd_jobs_cancel(args) -> int:
    job = _client(args).post(f"jobs/{args.job_id}/cancel")
    print(_("Job {id}: {status}").format(id=job["id"], status=_(job["status"])))
    return 0


def cmd_jobs_retry(args) -> int:
    job = _client(args).post(f"jobs/{args.job_id}/retry")
    print(f"Submitted job {job['id']} (a retry of {args.job_id}): {job['status']}")
    return 0


def cmd_jobs_output(args) -> int:
    target = Path(args.output or "output.ipynb")
    # an explicit -o PATH or --force is the user's say-so; the default name is not
    if target.exists() and not (args.output or args.force):
        question = _("{path} exists. Overwrite it? [y/N] ").format(path=target)
        if not (sys.stdin.isatty() and input(question).strip().lower() in ("y", "yes")):
            print(_("Not written: {path} exists. Pass --force to overwrite it, or -o PATH to "
                    "write elsewhere.").format(path=target), file=sys.stderr)
            return 2
    body = _client(args).request("GET", f"jobs/{args.job_id}/output").content
    target.write_bytes(body)
    print(_("Wrote {path}").format(path=target))
    return 0


def cmd_catalog(args) -> int:
    client = _client(args)
    if args.action == "images":
        for image in client.get("catalog/images")["images"]:
            star = "*" if image.get("featured") else " "
            print(f"{star} {image['slug']:<20} {image['kind']:<10} {image['name']}")
    else:
        for p in client.get("catalog/profiles")["profiles"]:
            state = "available" if p["available"] else f"unavailable: {p['unavailable_reason']}"
            default = " (default)" if p.get("default") else ""
            print(f"{p['slug']:<14} {p['cpu']:g} CPU  {p['memory']:<6} {p['gpu']} GPU  "
                  f"{p['price_per_hour']:.2f}/h  {state}{default}")
    return 0


def cmd_catalog_export(args) -> int:
    text = _client(args).request("GET", "catalog", params={"format": "yaml"}).text
    if not args.output:
        sys.stdout.write(text)
        return 0
    Path(args.output).write_text(text)
    print(f"Wrote the catalogue to {args.output}; load it back with "
          f"`fermi catalog import {args.output}` (try --dry-run first).")
    return 0


def cmd_catalog_import(args) -> int:
    from .platform_client import APIError

    path = Path(args.file)
    if not path.is_file():
        print(f"No such file: {path}", file=sys.stderr)
        return 2
    try:
        plan = _client(args).request(
            "PUT", "catalog", content=path.read_bytes(),
            params={"dry_run": "true" if args.dry_run else "false"},
            headers={"Content-Type": "application/yaml"},
        ).json()
    except APIError as error:
        raise APIError(error.status, f"{path}: {error.message}") from None
    if not plan["changed"]:
        print(f"No changes: the catalogue already matches {path}.")
        return 0
    print(f"Dry run, nothing changed. Importing {path} would change:" if plan["dry_run"]
          else f"Imported {path}:")
    for kind, change in plan["changes"].items():
        parts = [f"created {', '.join(change['created'])}" if change["created"] else "",
                 "updated " + ", ".join(f"{slug} ({', '.join(change['fields'].get(slug, []))})"
                                        for slug in change["updated"]) if change["updated"] else "",
                 f"deleted {', '.join(change['deleted'])}" if change["deleted"] else ""]
        print(f"  {kind}: {'; '.join(p for p in parts if p) or 'no change'}")
    return 0


def cmd_models_list(args) -> int:
    models = _client(args).get("models")["models"]
    if not models:
        print(_("No models yet. A training job registers one with "
                "mlflow.sklearn.log_model(..., registered_model_name=NAME)."))
    for model in models:
        shared = f"  shared with {', '.join(model['groups'])}" if model["groups"] else ""
        print(f"{model['name']:<30} latest v{model['latest_version']}  ({model['owner']}){shared}")
    return 0


def cmd_models_show(args) -> int:
    model = _client(args).get(f"models/{args.name}")
    if args.json:
        print(json.dumps(model, indent=2))
        return 0
    print(f"{model['name']} ({model['owner']})")
    for version in model["versions"]:
        job = version.get("job") or {}
        lineage = ""
        if job:
            metrics = ", ".join(f"{k}={v:g}" for k, v in job["metrics"].items())
            params = ", ".join(f"{k}={v!r}" for k, v in job["parameters"].items())
            lineage = f"  job {job['id']} ({job['notebook_name']}) {params}  {metrics}"
        print(f"  v{version['version']}  {version['created_at']}{lineage}")
    return 0


def _print_deployment(d: dict) -> None:
    print(f"{d['name']}  {d['status']}  {d['model']} v{d['version']}  replicas "
          f"{sum(r['state'] == 'ready' for r in d['replicas'])}/{d['desired_replicas']} "
          f"({d['min_replicas']}–{d['max_replicas']}, target {d['target_concurrency']:g})")
    print(f"  url: {d['url']}")
    for revision in d["revisions"]:
        print(f"  revision {revision['name']} v{revision['version']} {revision['role']}: "
              f"{revision['traffic_percent']}% of traffic, {revision['ready_replicas']} ready")
    if d.get("reason"):
        print(f"  reason: {d['reason']}")
    if d.get("api_key"):
        print(f"  {_('API key (shown once)')}: {d['api_key']}")
        print(f"  try: curl -H 'Authorization: Bearer {d['api_key']}' {d['url']}/v2/models/{d['model']}")


def cmd_deploy(args) -> int:
    if args.dry_run:
        from .backends.kubernetes.render import catalog_from, dump, render_deployment

        objects = render_deployment(
            args.model, args.version, catalog=catalog_from(args.catalog),
            name=args.name or args.model.lower().replace("_", "-")[:40], profile=args.profile,
            engine=args.engine or "auto", min_replicas=args.min or 1,
            max_replicas=args.max or args.min or 1, target_concurrency=args.target or 4,
            kserve=args.kserve)
        print(dump(objects, args.output), end="")
        return 0
    body = {"name": args.name or args.model.lower().replace("_", "-")[:40], "model": args.model,
            "version": args.version, "profile": args.profile, "engine": args.engine,
            "min_replicas": args.min, "max_replicas": args.max, "target_concurrency": args.target}
    client = _client(args)
    deployment = client.post("deployments", {k: v for k, v in body.items() if v is not None})
    _print_deployment(deployment)
    if args.wait:
        while deployment["status"] not in ("ready", "failed"):
            time.sleep(0.5)
            deployment = client.get(f"deployments/{deployment['name']}")
        print(f"  {deployment['status']}")
        return 0 if deployment["status"] == "ready" else 1
    return 0


def cmd_deployments_list(args) -> int:
    deployments = _client(args).get("deployments")["deployments"]
    if not deployments:
        print("No inference services yet. Deploy a model: fermi deploy MODEL --version V")
    for d in deployments:
        _print_deployment(d)
    return 0


def cmd_deployments_show(args) -> int:
    d = _client(args).get(f"deployments/{args.name}")
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    _print_deployment(d)
    for e in (d.get("events") or [])[-10:]:
        print(f"  {e['at']}  {e['kind']}: {e['message'].splitlines()[0]}")
    return 0


def _patch(args, body: dict) -> int:
    d = _client(args).request("PATCH", f"deployments/{args.name}", json=body).json()
    _print_deployment(d)
    return 0


def cmd_deployments_scale(args) -> int:
    body = {"min_replicas": args.min, "max_replicas": args.max, "target_concurrency": args.target}
    return _patch(args, {k: v for k, v in body.items() if v is not None})


def cmd_deployments_canary(args) -> int:
    return _patch(args, {"canary": {"version": args.version, "traffic_percent": args.percent}})


def cmd_deployments_action(args) -> int:
    return _patch(args, {"action": args.action})


def cmd_deployments_delete(args) -> int:
    if not args.yes:
        answer = input(f"Delete inference service {args.name!r}? Its URL stops answering. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Not deleted.")
            return 1
    _client(args).request("DELETE", f"deployments/{args.name}")
    print(f"Deleting {args.name}: replicas drain, then stop.")
    return 0


def parser() -> argparse.ArgumentParser:
    from . import __version__

    top = argparse.ArgumentParser(prog="fermi", description="Fermi (费米集群): a Jupyter-native AI platform")
    top.add_argument("--version", action="version", version=f"fermi {__version__}")
    top.add_argument("--url", help="hub URL (default: $FERMI_URL or http://127.0.0.1:8000)")
    sub = top.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole platform on this machine")
    up.add_argument("--port", type=int, default=8000, help="public port (default 8000)")
    up.add_argument("--serving-port", type=int,
                    help="port of the inference services' router (default: PORT + 1)")
    up.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--data-dir", default="fermi-data", help="where all state lives (default ./fermi-data)")
    up.add_argument("--public-url", help="URL users reach the hub at, if not http://IP:PORT")
    up.add_argument("--log-to-terminal", action="store_true", help="show the hub's log here")
    up.set_defaults(func=cmd_up)

    db = sub.add_parser("db", help="the platform database").add_subparsers(dest="action", required=True)
    upgrade = db.add_parser("upgrade", help="bring the platform database to this version's schema "
                            "(a SQLite file is copied aside first; back up PostgreSQL yourself)")
    upgrade.add_argument("--data-dir", default="fermi-data",
                         help="the data dir of `fermi up` (default ./fermi-data)")
    upgrade.add_argument("--db-url", help="the database's SQLAlchemy URL (default: $FERMI_DB_URL, "
                         "else fermi.sqlite in the data dir)")
    upgrade.set_defaults(func=cmd_db_upgrade)

    about_images = ("the official container images, from images/NAME/Dockerfile: build them "
                    "with this machine's engine, push them to a registry for a cluster")
    images = sub.add_parser("images", help=about_images, description=about_images
                            ).add_subparsers(dest="action", required=True)
    build = images.add_parser("build", help="build official images from images/NAME/Dockerfile "
                              "with this machine's container engine and pin their digests")
    build.add_argument("names", nargs="*", metavar="NAME", help="python, hub, router, model-server (the default: all four), pytorch "
                       "(only when named: it is big)")
    build.add_argument("--base", help="base image (default: one made from Debian's packages)")
    build.add_argument("--data-dir", default="fermi-data",
                       help="the platform's data dir, whose catalogue records the digests "
                            "(default ./fermi-data)")
    build.add_argument("--db-url", help="the platform database, if not the data dir's")
    build.set_defaults(func=cmd_images_build)
    upload = images.add_parser(
        "push", help="push built official images to a registry and write their digests where "
        "a cluster install reads them: a Helm values overlay, kustomizations of extras.yaml and "
        "kserve.yaml, and the catalogue (docs/kubernetes.md)")
    upload.add_argument("names", nargs="*", metavar="NAME",
                        help="what to push (default: python, hub, router, model-server, and "
                             "pytorch if built); each must be built (`fermi images build`)")
    upload.add_argument("--registry", required=True, metavar="HOST[:PORT]/PREFIX",
                        help="where to, e.g. registry.example.org/fermi: images go to "
                             "PREFIX/NAME:VERSION. The engine's login applies (`podman login`)")
    upload.add_argument("--insecure", action="store_true",
                        help="the registry speaks plain HTTP or has an untrusted certificate "
                             "(podman; Docker wants it in its daemon's insecure-registries)")
    upload.add_argument("--out", default="fermi-images", metavar="DIR",
                        help="where the overlay and kustomizations go (default ./fermi-images)")
    upload.add_argument("--db-url", help="also pin the catalogue's images in this platform "
                        "database (the cluster's FERMI_DB_URL), for a platform already running")
    upload.add_argument("--data-dir", default="fermi-data",
                        help="the data dir whose engine built the images (default ./fermi-data)")
    upload.set_defaults(func=cmd_images_push)

    jobs = sub.add_parser("jobs", help="training jobs").add_subparsers(dest="action", required=True)
    submit = jobs.add_parser("submit", help="run a notebook as a training job")
    submit.add_argument("notebook")
    submit.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="a parameter of the notebook")
    submit.add_argument("--profile")
    submit.add_argument("--image")
    submit.add_argument("--name")
    submit.add_argument("--priority", type=int)
    submit.add_argument("--timeout", type=int, help="seconds before the job is stopped")
    submit.add_argument("--wait", action="store_true", help="wait until the job ends")
    submit.add_argument("--logs", action="store_true", help="with --wait: stream the log")
    submit.add_argument("--nodes", type=int, default=1, help="distributed: pods running the notebook")
    submit.set_defaults(func=cmd_jobs_submit)

    listing = jobs.add_parser("list", help="your jobs")
    listing.add_argument("--status")
    listing.add_argument("--owner")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=cmd_jobs_list)
    for name, func, help_ in (("show", cmd_jobs_show, "a job's status, parameters and metrics"),
                              ("logs", cmd_jobs_logs, "a job's log"),
                              ("cancel", cmd_jobs_cancel, "stop a job"),
                              ("retry", cmd_jobs_retry, "run an ended job again"),
                              ("output", cmd_jobs_output, "download the executed notebook")):
        action = jobs.add_parser(name, help=help_)
        action.add_argument("job_id")
        action.set_defaults(func=func)
        if name == "show":
            action.add_argument("--json", action="store_true")
        if name == "logs":
            action.add_argument("-f", "--follow", action="store_true")
        if name == "output":
            action.add_argument("-o", "--output", metavar="PATH",
                                help="where to write it (default: ./output.ipynb, never "
                                     "overwritten without --force or a yes on a terminal)")
            action.add_argument("-f", "--force", action="store_true",
                                help="overwrite ./output.ipynb if it exists")

    models = sub.add_parser("models", help="the model repository").add_subparsers(dest="action", required=True)
    models.add_parser("list", help="models you can see").set_defaults(func=cmd_models_list)
    show_model = models.add_parser("show", help="a model's versions and lineage")
    show_model.add_argument("name")
    show_model.add_argument("--json", action="store_true")
    show_model.set_defaults(func=cmd_models_show)

    deploy = sub.add_parser("deploy", help="promote a model version to an inference service")
    deploy.add_argument("model")
    deploy.add_argument("--version", required=True)
    deploy.add_argument("--name", help="deployment name (default: the model's)")
    deploy.add_argument("--profile")
    deploy.add_argument("--engine", choices=["auto", "sklearn", "mlflow", "vllm"])
    deploy.add_argument("--min", type=int, help="minimum replicas")
    deploy.add_argument("--max", type=int, help="maximum replicas")
    deploy.add_argument("--target", type=float, help="in-flight requests per replica to aim at")
    deploy.add_argument("--wait", action="store_true", help="wait until it is ready")
    deploy.add_argument("--kserve", action="store_true",
                        help="with --dry-run: a KServe InferenceService instead of Deployment+HPA")
    deploy.set_defaults(func=cmd_deploy)
    for command in (submit, deploy):
        command.add_argument("--dry-run", action="store_true",
                             help="print the objects the backend would create; needs no platform")
        command.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
        command.add_argument("--backend", choices=["kubernetes"], default="kubernetes",
                             help="with --dry-run: the backend to render for")
        command.add_argument("--catalog", help="with --dry-run: a catalogue file "
                                                 "(default: hub_config/catalog.yaml)")

    deployments = sub.add_parser("deployments", help="inference services").add_subparsers(
        dest="action", required=True)
    deployments.add_parser("list").set_defaults(func=cmd_deployments_list)
    show_d = deployments.add_parser("show")
    show_d.add_argument("name")
    show_d.add_argument("--json", action="store_true")
    show_d.set_defaults(func=cmd_deployments_show)
    scale = deployments.add_parser("scale", help="change bounds or target")
    scale.add_argument("name")
    scale.add_argument("--min", type=int)
    scale.add_argument("--max", type=int)
    scale.add_argument("--target", type=float)
    scale.set_defaults(func=cmd_deployments_scale)
    canary = deployments.add_parser("canary", help="send a share of traffic to another version")
    canary.add_argument("name")
    canary.add_argument("--version", required=True)
    canary.add_argument("--percent", type=int, required=True)
    canary.set_defaults(func=cmd_deployments_canary)
    for action, help_ in (("promote", "make the canary the only revision"),
                          ("rollback", "send all traffic back to the stable revision"),
                          ("stop", "stop the replicas, keep the service declared"),
                          ("start", "start a stopped service again"),
                          ("rotate-key", "issue a new API key")):
        p = deployments.add_parser(action, help=help_)
        p.add_argument("name")
        p.set_defaults(func=cmd_deployments_action, action=action)
    delete = deployments.add_parser("delete", help="delete an inference service")
    delete.add_argument("name")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(func=cmd_deployments_delete)

    catalog = sub.add_parser("catalog", help="images, profiles and pools").add_subparsers(
        dest="action", required=True)
    catalog.add_parser("images", help="images you can run").set_defaults(func=cmd_catalog)
    catalog.add_parser("profiles", help="profiles offered to you, with availability").set_defaults(
        func=cmd_catalog)
    export = catalog.add_parser("export", help="the whole catalogue as YAML (admins)")
    export.add_argument("-o", "--output", help="write to this file instead of printing it")
    export.set_defaults(func=cmd_catalog_export)
    load = catalog.add_parser(
        "import", help="replace the catalogue with a YAML file, as one change (admins)")
    load.add_argument("file", help="a catalogue YAML file (the format of `fermi catalog export`)")
    load.add_argument("--dry-run", action="store_true", help="only show what would change")
    load.set_defaults(func=cmd_catalog_import)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "up":
        return args.func(args)
    from .platform_client import APIError
    from .errors import FermiError

    try:
        status = args.func(args)
        sys.stdout.flush()  # a pipe's reader that left is found here, not after main returns
        return status
    except (APIError, FermiError) as error:
        print(f"Error: {error.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader left (`fermi jobs show ID | head`): stop quietly, as Unix tools do; stdout
        # goes to /dev/null so that the flush at exit does not fail a second time
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a command a pipe ended


if __name__ == "__main__":
    sys.exit(main())
