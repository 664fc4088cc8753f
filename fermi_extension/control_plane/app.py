"""The control plane process: a JupyterHub-managed service named ``fermi``.

Configured with traitlets (``--FermiService.trait=value`` or a config file); its swappable parts
(the job backend) are ``Type`` traits, so tests and operators choose them through config.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from tornado import web
from traitlets import Enum, List, Type, Unicode, default
from traitlets.config import Application

from .. import __version__
from ..catalog.builds import BuildService, PackageSettings, pip_config
from ..catalog.store import CatalogStore, load_catalog_file, seed_path
from ..db import make_session_factory
from ..containers.engine import Isolation
from ..jobs.backend import JobBackend
from ..jobs.notebook import warm_up as warm_up_notebook_validation
from ..jobs.service import JobRunner, JobService
from ..paths import shipped
from ..processes import die_with_parent
from ..tracking.tracker import Tracker
from ..deployments.backend import ServingBackend
from ..deployments.service import DeploymentController, DeploymentService
from ..registry.service import ModelRepository
from ..usage.service import UsageService
from ..jobs.schedules import ScheduleService
from ..datasets.service import (DatasetPolicy, DatasetService, dataset_claims_from_env,
                        dataset_roots_from_env)
from ..quotas.service import QuotaService
from ..workflows.service import WorkflowService
from ..catalog import api as catalog_api
from ..datasets import api as datasets_api
from ..deployments import api as deployments_api
from ..jobs import api as jobs_api
from ..quotas import api as quotas_api
from ..registry import api as registry_api
from ..usage import api as usage_api
from ..workflows import api as workflows_api
from . import admin_pages, tracking_proxy
from . import alerts as alerts_api, dashboard
from ..monitoring.hub_view import HubClient
from ..monitoring.state import Monitor
from .metrics import MetricsHandler
from .pages import GuideHandler, HomeHandler
from .images_page import ImagesPage
from .openapi import HealthHandler, NoRouteHandler, OpenAPIHandler, build_openapi, tornado_pattern

# the one switch (FermiService.backend / $FERMI_BACKEND) → the job and serving backends; on
# one machine with a container engine (containers/engine.py) jobs and replicas run in containers
CONTAINER_JOBS = "fermi_extension.backends.local.container_jobs.ContainerJobBackend"
CONTAINER_SERVING = "fermi_extension.backends.local.container_serving.ContainerServingBackend"
BACKENDS = {
    "local": ("fermi_extension.backends.local.jobs.LocalJobBackend",
              "fermi_extension.backends.local.serving.LocalServingBackend"),
    "kubernetes": ("fermi_extension.backends.kubernetes.jobs.KubeJobBackend",
                   "fermi_extension.backends.kubernetes.serving.KubeServingBackend"),
}

@dataclass(frozen=True)
class Services:
    """Every part of the control plane, built once by ``FermiService.init_services``, each
    handed the others it needs there. Handlers reach them as ``self.services``
    (``APIHandler``), never by looking one up in the app."""

    catalog: CatalogStore
    quotas: QuotaService
    datasets: DatasetService
    jobs: JobService
    runner: JobRunner
    schedules: ScheduleService
    registry: ModelRepository
    deployments: DeploymentService
    controller: DeploymentController
    workflows: WorkflowService
    builds: BuildService
    usage: UsageService
    monitor: Monitor
    hub: HubClient
    job_backend: JobBackend
    serving_backend: ServingBackend
    tracker: Tracker


# one route table per domain (each domain's api.py), all under /api/
ROUTES = [*catalog_api.routes, *jobs_api.routes, *registry_api.routes, *deployments_api.routes,
          *usage_api.routes, *quotas_api.routes, *datasets_api.routes, *workflows_api.routes]
ROUTES += [*dashboard.routes, *alerts_api.routes]  # operating the platform: dashboard, alerts


class FermiService(Application):
    name = "fermi-service"
    description = "The Fermi control plane (run by JupyterHub as the service 'fermi')"

    data_dir = Unicode(
        help="""Folder holding all platform state (database, job folders). Default: the
        FERMI_DATA_DIR environment variable that `fermi up` sets, e.g. ./fermi-data""",
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self):
        return os.environ.get("FERMI_DATA_DIR", os.path.abspath("fermi-data"))

    db_url = Unicode(
        help="""SQLAlchemy URL of the platform database. Default: SQLite in the data dir.
        Production: postgresql+psycopg://fermi:…@db/fermi""",
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self):
        return os.environ.get("FERMI_DB_URL") or f"sqlite:///{Path(self.data_dir) / 'fermi.sqlite'}"

    catalog_seed = Unicode(
        help="""Catalogue YAML loaded into an empty database on first start
        (default: hub_config/catalog.yaml).""",
    ).tag(config=True)

    @default("catalog_seed")
    def _default_catalog_seed(self):
        return seed_path()

    tracking_uri = Unicode(
        help="URL of the MLflow tracking server jobs report to (default: $FERMI_TRACKING_URI).",
    ).tag(config=True)

    @default("tracking_uri")
    def _default_tracking_uri(self):
        return os.environ.get("FERMI_TRACKING_URI", "http://127.0.0.1:5000")

    backend = Enum(
        ["local", "kubernetes"],
        help="""Where the work runs: 'local' (default: processes on this machine) or 'kubernetes'
        (Jobs, Kueue, Deployments or KServe in the cluster; see docs/kubernetes.md). The one
        switch: it picks the job and serving backends below unless those are set themselves.
        Default: $FERMI_BACKEND, else 'local'. Example: c.FermiService.backend = "kubernetes".""",
    ).tag(config=True)

    @default("backend")
    def _default_backend(self):
        value = os.environ.get("FERMI_BACKEND", "local").strip().lower() or "local"
        if value not in ("local", "kubernetes"):
            raise ValueError(f"FERMI_BACKEND must be 'local' or 'kubernetes', not {value!r}")
        return value

    job_backend_class = Type(
        klass=JobBackend,
        help="""Where training jobs run (default: from `backend`: LocalJobBackend, or
        ContainerJobBackend where `fermi up` found a container engine, or
        fermi_extension.backends.kubernetes.jobs.KubeJobBackend).""",
    ).tag(config=True)

    @default("job_backend_class")
    def _default_job_backend_class(self):
        if self.backend == "local" and Isolation.from_env().containers:
            return CONTAINER_JOBS
        return BACKENDS[self.backend][0]

    serving_backend_class = Type(
        klass=ServingBackend,
        help="""Where inference services run (default: from `backend`: LocalServingBackend, or
        ContainerServingBackend where `fermi up` found a container engine, or
        fermi_extension.backends.kubernetes.serving.KubeServingBackend).""",
    ).tag(config=True)

    @default("serving_backend_class")
    def _default_serving_backend_class(self):
        if self.backend == "local" and Isolation.from_env().containers:
            return CONTAINER_SERVING
        return BACKENDS[self.backend][1]

    serving_url = Unicode(
        help="""Public URL of the inference router; a deployment's URL is SERVING_URL/NAME
        (default: $FERMI_SERVING_URL, e.g. http://127.0.0.1:8001).""",
    ).tag(config=True)

    @default("serving_url")
    def _default_serving_url(self):
        return os.environ.get("FERMI_SERVING_URL", "http://127.0.0.1:8001")

    service_url = Unicode(help="Where to listen (default: $JUPYTERHUB_SERVICE_URL).").tag(config=True)

    @default("service_url")
    def _default_service_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    ip = Unicode(
        help="""Address to listen on. Default: $FERMI_SERVICE_IP, else the host of
        ``service_url``. In the hub pod of the Helm chart, 0.0.0.0: the proxy reaches the
        service at http://hub:10101, a Service's name that is no address of the pod.""",
    ).tag(config=True)

    @default("ip")
    def _default_ip(self):
        return os.environ.get("FERMI_SERVICE_IP", "") or urlparse(self.service_url).hostname

    prefix = Unicode(help="URL prefix (default: $JUPYTERHUB_SERVICE_PREFIX).").tag(config=True)

    @default("prefix")
    def _default_prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/fermi/")

    public_url = Unicode(
        help="The hub's public URL, used in absolute links (default: $FERMI_PUBLIC_URL)."
    ).tag(config=True)

    @default("public_url")
    def _default_public_url(self):
        return os.environ.get("FERMI_PUBLIC_URL", "http://127.0.0.1:8000")

    dataset_roots = List(
        Unicode(),
        help="""Folders of this machine that datasets may be in: a path given as a dataset's
        location must be inside one (its real path, links followed) and outside the data dir,
        else it is refused with the same answer whether or not anything is there. Default:
        $FERMI_DATASET_ROOTS (folders separated by ':'), else none: paths are refused and only
        pvc:// and s3:// locations are taken. Example: c.FermiService.dataset_roots =
        ["/srv/datasets"]. Dev servers read the same variable (FermiSpawnerMixin.dataset_roots).""",
    ).tag(config=True)

    @default("dataset_roots")
    def _default_dataset_roots(self):
        return dataset_roots_from_env()

    dataset_claims = List(
        Unicode(),
        help="""PersistentVolumeClaims that datasets may be on (pvc://CLAIM/SUBPATH): job pods
        mount only these, read-only; never list the jobs claim (KubernetesSettings.jobs_claim)
        or users' home volumes. Default: $FERMI_DATASET_CLAIMS (names separated by ','), else
        none: pvc:// locations are refused. Example: c.FermiService.dataset_claims =
        ["datasets"]. Dev servers read the same variable (FermiSpawnerMixin.dataset_claims).""",
    ).tag(config=True)

    @default("dataset_claims")
    def _default_dataset_claims(self):
        return dataset_claims_from_env()

    package_index_url = Unicode(
        help="""The package index image builds install from: the Dockerfile's build argument
        PIP_INDEX_URL (declare it with `ARG PIP_INDEX_URL`). Default: this machine's pip setting
        (`pip config list`, $PIP_INDEX_URL), else none (pip's own default, PyPI). Example:
        "https://mirror.example.org/simple".""",
    ).tag(config=True)

    @default("package_index_url")
    def _default_package_index_url(self):
        return pip_config().get("index-url", "")

    package_extra_index_urls = List(
        Unicode(), help="""Further indexes for image builds (build argument PIP_EXTRA_INDEX_URL,
        space-separated). Default: pip's extra-index-url here. Example:
        ["https://download.pytorch.org/whl/cu121"].""",
    ).tag(config=True)

    @default("package_extra_index_urls")
    def _default_package_extra_index_urls(self):
        return pip_config().get("extra-index-url", "").split()

    package_trusted_hosts = List(
        Unicode(), help="""Index hosts image builds trust without TLS checks (build argument
        PIP_TRUSTED_HOST). Default: pip's trusted-host here. Example: ["mirror.internal"].""",
    ).tag(config=True)

    @default("package_trusted_hosts")
    def _default_package_trusted_hosts(self):
        return pip_config().get("trusted-host", "").split()

    package_ca_bundle = Unicode(
        help="""A CA bundle file for the package index (a company CA): copied into every build
        context as fermi-ca.pem, with build argument PIP_CERT=/fermi-ca.pem (a Dockerfile
        copies it: `COPY fermi-ca.pem /fermi-ca.pem`). Default: pip's cert setting here
        ($PIP_CERT), else none. Example: "/etc/ssl/certs/company-ca.pem".""",
    ).tag(config=True)

    @default("package_ca_bundle")
    def _default_package_ca_bundle(self):
        return pip_config().get("cert", "")

    config_file = Unicode(
        help="A traitlets config file (default: $FERMI_SERVICE_CONFIG, if set)."
    ).tag(config=True)

    @default("config_file")
    def _default_config_file(self):
        return os.environ.get("FERMI_SERVICE_CONFIG", "")

    aliases = {"config": "FermiService.config_file", "data-dir": "FermiService.data_dir"}

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s fermi] %(message)s")
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        self.session_factory = make_session_factory(self.db_url)
        self.init_services()
        self.http_server = None
        self._background: list[asyncio.Task] = []

    # -- the composition root: every part built once, here, and handed what it needs ---------

    def init_services(self) -> None:
        catalog = CatalogStore(self.session_factory)
        if catalog.seed_if_empty(load_catalog_file(self.catalog_seed)):
            self.log.info("Catalogue seeded from %s", self.catalog_seed)
        # one rule for registering, attaching and (on Kubernetes, see KubernetesSettings) mounting
        self.dataset_policy = DatasetPolicy(self.dataset_roots, self.dataset_claims, self.data_dir)
        parts = {"session_factory": self.session_factory, "dataset_policy": self.dataset_policy}

        def backend(cls):  # each backend gets the parts it declares as traits, nothing more
            return cls(parent=self, **{k: v for k, v in parts.items() if cls.class_traits().get(k)})

        job_backend = backend(self.job_backend_class)
        serving_backend = backend(self.serving_backend_class)
        tracker = Tracker(self.tracking_uri)
        jobs_dir = Path(self.data_dir) / "jobs"
        warm_up_notebook_validation()
        quotas = QuotaService(self.session_factory)
        datasets = DatasetService(self.session_factory, self.dataset_policy)
        # jobs reach MLflow through the tracking proxy with a token of their own; the control
        # plane itself (tracker) keeps the direct URI
        runner = JobRunner(self.session_factory, catalog, job_backend, tracker, jobs_dir,
                           tracking_uri=tracking_proxy.workload_tracking_uri(
                               self.service_url, self.prefix), quotas=quotas)
        jobs = JobService(self.session_factory, catalog, job_backend, jobs_dir, wake=runner.wake,
                          quotas=quotas, datasets=datasets)
        registry = ModelRepository(self.session_factory, tracker)
        deployments = DeploymentService(self.session_factory, catalog, registry, serving_backend,
                                        self.serving_url, quotas=quotas)
        controller = DeploymentController(self.session_factory, deployments, serving_backend,
                                          tracker, quotas=quotas)
        deployments.controller = controller
        # the one instance HubOAuthenticated handlers share (OAuth state lives in it)
        self.hub_auth = HubOAuth.instance(cache_max_age=60)
        # the hub's users, groups and servers, read with this service's token
        hub = HubClient(self.hub_auth.api_url, self.hub_auth.api_token)
        self.services = Services(
            catalog=catalog, quotas=quotas, datasets=datasets, jobs=jobs, runner=runner,
            schedules=ScheduleService(self.session_factory, jobs), registry=registry,
            deployments=deployments, controller=controller,
            workflows=WorkflowService(self.session_factory, jobs, deployments),
            builds=BuildService(self.session_factory, Path(self.data_dir) / "builds",
                                cluster_builder=self.cluster_builder(),
                                **self.image_settings()),
            usage=UsageService(self.session_factory),
            # one platform snapshot for metrics, dashboard, cost analysis and alerts
            monitor=Monitor(self.session_factory, catalog, deployments, hub), hub=hub,
            job_backend=job_backend, serving_backend=serving_backend, tracker=tracker,
        )

    def image_settings(self) -> dict:
        """Container mode's engine (builds and pulls) and the package settings builds use."""
        from ..containers.runtime import platform_id

        isolation = Isolation.from_env()
        return {"engine_url": isolation.url if self.backend == "local" else "",
                "isolation_reason": isolation.reason, "platform": platform_id(self.data_dir),
                "packages": PackageSettings(self.package_index_url,
                                            tuple(self.package_extra_index_urls),
                                            tuple(self.package_trusted_hosts),
                                            self.package_ca_bundle)}

    def cluster_builder(self):
        """On Kubernetes, image builds run as Kaniko Jobs; here, with a local builder."""
        if self.backend != "kubernetes":
            return None
        from ..backends.kubernetes.builds import KubeImageBuilder

        return KubeImageBuilder(parent=self, dataset_policy=self.dataset_policy)

    def make_app(self) -> web.Application:
        prefix = self.prefix.rstrip("/")
        base = self.public_url.rstrip("/") + prefix
        self.openapi = build_openapi(ROUTES, base + "/api", __version__)
        handlers = [
            (prefix + tornado_pattern(template), handler) for template, handler in ROUTES
        ] + [
            (prefix + "/api/openapi.json", OpenAPIHandler),
            (prefix + "/api/health", HealthHandler),
            (prefix + "/api(?:/.*)?", NoRouteHandler),  # after every route: a JSON 404
            (prefix + "/oauth_callback", HubOAuthCallbackHandler),
            (prefix + "/metrics", MetricsHandler),
            *tracking_proxy.routes(prefix, tracking_uri=self.tracking_uri,
                                   session_factory=self.session_factory, hub_auth=self.hub_auth),
            *admin_pages.page_routes(prefix),
            *alerts_api.page_routes(prefix),
            (prefix + "/images/?", ImagesPage),
            (prefix + "/guide/?", GuideHandler),
            (prefix + "/?", HomeHandler),
        ]
        return web.Application(
            handlers,
            hub_auth=self.hub_auth,
            cookie_secret=os.urandom(32),
            services=self.services,  # the one way handlers and pages reach the parts
            openapi=self.openapi,
            prefix=self.prefix,
            login_url=self.hub_auth.login_url,
            xsrf_cookies=False,
        )

    # -- the one lifecycle: everything started here is stopped by ``stop_services`` ----------

    async def start_services(self) -> None:
        """Start the backends, the job runner, the deployment controller, the schedules, the
        workflows, the monitor and the HTTP server, in that order."""
        s = self.services
        await s.job_backend.start()
        await s.runner.start()
        await s.controller.start()
        self._background = [asyncio.create_task(s.schedules.run(), name="fermi-schedules"),
                            asyncio.create_task(s.workflows.run(), name="fermi-workflows")]
        s.monitor.start()
        url = urlparse(self.service_url)
        self.http_server = self.make_app().listen(url.port, self.ip, xheaders=True)
        # dev servers in containers call the API at the bridge's gateway (hub_config's
        # FERMI_API_URL); on loopback only without an engine
        workload_ip = os.environ.get("FERMI_WORKLOAD_IP", "")
        if workload_ip and workload_ip != self.ip and Isolation.from_env().containers:
            self.http_server.listen(url.port, workload_ip)
        self.log.info("Fermi control plane listening on %s%s", self.service_url, self.prefix)

    async def stop_services(self) -> None:
        """Stop what ``start_services`` started, newest first, and wait for each to end."""
        s = self.services
        if self.http_server is not None:
            self.http_server.stop()
            await self.http_server.close_all_connections()
            self.http_server = None
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        await s.monitor.stop()
        await s.builds.stop()
        # on one machine Ctrl-C means "stop everything"; on Kubernetes a hub pod restarting
        # (a rollout) must leave jobs and inference services running, to be re-attached
        stop_work = self.backend != "kubernetes"
        await s.runner.stop(stop_jobs=stop_work)
        await s.controller.stop(stop_all=stop_work)
        await s.tracker.close()

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start_services()
            await stop.wait()
            self.log.info("Stopping: running jobs are stopped and queued again for the next start")
        finally:  # also when a part failed to start: those already started are stopped
            await self.stop_services()

    def start(self) -> None:
        asyncio.run(self.run())


def main(argv: list[str] | None = None) -> None:
    # a hub killed with -9 takes this process with it, abruptly, so that running jobs are left
    # alone and re-attached by the next control plane (see JobRunner.reconcile)
    die_with_parent(signal.SIGKILL)
    app = FermiService.instance()
    app.initialize(argv)
    app.start()


if __name__ == "__main__":
    main()
