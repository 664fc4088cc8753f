"""What both Fermi spawners share: the catalogue read at spawn time, the one options model and
form (``options.py``), the checks, the user's notices, and the billing record of each run.

``FermiSpawnerMixin`` goes first in a spawner's bases (``class FermiLocalSpawner(
FermiSpawnerMixin, SimpleLocalProcessSpawner)``). Per spawn it rebuilds everything from
``user_options`` and the catalogue as it is then (``load_user_options``, KubeSpawner's hook
name), so an admin's edit is seen by the next spawn with no hub restart, and nothing of one
spawn leaks into the next.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker
from tornado import web
from traitlets import List, Unicode, default
from traitlets.config import LoggingConfigurable

from fermi_extension.catalog.schema import Catalog, Image, Pool, Profile
from fermi_extension.catalog.store import CatalogStore
from fermi_extension.datasets.service import (
    DatasetPolicy,
    DatasetService,
    dataset_claims_from_env,
    dataset_roots_from_env,
)
from fermi_extension.db import make_session_factory, platform_db_url_from_env, utcnow
from fermi_extension.errors import FermiError
from fermi_extension.usage.service import usage_record

from .options import (
    ImageView,
    ProfileView,
    Refused,
    Resolved,
    offered_images,
    offered_profiles,
    options_from_form,
    render_form,
    request_carries_options,
    resolve,
)

_sessions: dict[str, sessionmaker] = {}


def platform_sessions(url: str) -> sessionmaker:
    """One engine per platform database URL for the whole hub process."""
    if url not in _sessions:
        try:
            _sessions[url] = make_session_factory(url)
        except OperationalError:  # the control plane created the tables at the same moment
            _sessions[url] = make_session_factory(url)
    return _sessions[url]


def spawn_error(status: int, message: str) -> web.HTTPError:
    """An error the hub shows as is: on the spawn page, and as the REST API's ``message``."""
    error = web.HTTPError(status, "%s", message)
    error.jupyterhub_message = message
    return error


class FermiSpawnerMixin(LoggingConfigurable):
    """Catalogue-driven options, checks, notices and usage records for a Fermi spawner: put it
    before the JupyterHub spawner class in the bases; its methods call that spawner's."""

    platform_db_url = Unicode(
        help="""SQLAlchemy URL of the platform database, shared with the control plane: the
        catalogue is read from it at every spawn, and GPU assignments and usage records are
        written to it. Default: $FERMI_DB_URL, else the SQLite file of the data dir
        ($FERMI_DATA_DIR/fermi.sqlite), e.g. sqlite:////srv/fermi-data/fermi.sqlite.""",
    ).tag(config=True)

    @default("platform_db_url")
    def _default_platform_db_url(self):
        return platform_db_url_from_env()

    dataset_roots = List(
        Unicode(),
        help="""Folders of this machine that datasets attached to dev servers may be in: the
        control plane's rule (FermiService.dataset_roots), checked again at every spawn, since
        the list, or where a link points, may have changed since the dataset was registered.
        Give both the same folders. Default: $FERMI_DATASET_ROOTS (folders separated by ':'),
        else none: datasets that are paths are not attached.""",
    ).tag(config=True)

    @default("dataset_roots")
    def _default_dataset_roots(self):
        return dataset_roots_from_env()

    dataset_claims = List(
        Unicode(),
        help="""PersistentVolumeClaims that datasets attached to dev servers may be on (as
        FermiService.dataset_claims, checked again at every spawn). Default:
        $FERMI_DATASET_CLAIMS (names separated by ','), else none.""",
    ).tag(config=True)

    @default("dataset_claims")
    def _default_dataset_claims(self):
        return dataset_claims_from_env()

    # per spawn: rebuilt by load_user_options; the run's record lives in the spawner's state
    fermi: Resolved | None = None
    fermi_run: dict | None = None

    # -- the catalogue ---------------------------------------------------------------------------

    def platform_sessions(self) -> sessionmaker:
        if not self.platform_db_url:
            raise Refused(503, "The platform database is not configured "
                               "(FermiSpawner.platform_db_url); ask an admin.")
        return platform_sessions(self.platform_db_url)

    def read_catalog(self) -> Catalog:
        try:
            return CatalogStore(self.platform_sessions()).catalog()
        except Refused:
            raise
        except Exception as error:  # empty (first start still seeding) or unreadable
            self.log.warning("Could not read the catalogue: %s", error)
            raise Refused(503, "The catalogue of images and profiles cannot be read right now "
                               "(the platform may still be starting); try again in a moment.")

    # -- what the concrete spawner says about where it runs (overridden) -------------------------

    def profile_check(self, profile: Profile, pool: Pool | None) -> tuple[bool, str | None]:
        """Whether servers of ``profile`` can run where this spawner runs them, and why not."""
        return True, None

    def image_check(self, image: Image) -> tuple[bool, str | None]:
        """Whether this spawner can run ``image``, and why not."""
        return True, None

    def profile_view(self, profile: Profile, pool: Pool | None) -> ProfileView:
        """The form's view of a profile (subclasses add what is free right now)."""
        return ProfileView(profile, *self.profile_check(profile, pool))

    def apply_choice(self, resolved: Resolved) -> None:
        """Set the spawner's own settings for this spawn from the choice (rebuilt every time)."""

    def release_devices(self) -> None:
        """Give back what the run held (the local spawner's GPUs)."""

    # -- who asks --------------------------------------------------------------------------------

    def user_groups(self) -> set[str]:
        return {getattr(g, "name", g) for g in (getattr(self.user, "groups", None) or [])}

    def user_is_admin(self) -> bool:
        return bool(getattr(self.user, "admin", False))

    def caller(self):
        """The user as the platform's checks (quotas, datasets) see them."""
        from fermi_extension.caller import Caller

        return Caller(self.user.name, self.user_is_admin(), tuple(sorted(self.user_groups())))

    # -- options ---------------------------------------------------------------------------------

    @default("options_form")
    def _fermi_options_form(self):
        return self.render_options_form

    @default("options_from_form")
    def _fermi_options_from_form(self):
        return options_from_form

    def options_from_query(self, query_data):
        return options_from_form(query_data)

    def _resolve(self, catalog: Catalog, options: Any, requested: bool) -> Resolved:
        return resolve(catalog, options, groups=self.user_groups(), admin=self.user_is_admin(),
                       requested=requested, profile_check=self.profile_check,
                       image_check=self.image_check)

    async def render_options_form(self, _spawner=None) -> str:
        """The spawn form from the catalogue as it is now (a callable ``options_form``)."""
        try:
            catalog = self.read_catalog()
        except Refused as error:
            raise spawn_error(error.status, error.message) from None
        pools = {p.slug: p for p in catalog.pools}
        profiles = [self.profile_view(p, pools.get(p.pool))
                    for p in offered_profiles(catalog, self.user_groups(), self.user_is_admin())]
        images = [ImageView(i, *self.image_check(i)) for i in offered_images(catalog)]
        try:
            selected = self._resolve(catalog, self.user_options, requested=False).user_options
        except Refused:
            selected = {}
        usable = [v.profile.slug for v in profiles if v.available]
        if selected.get("profile") not in usable:
            default = catalog.default_profile().slug
            selected["profile"] = default if default in usable else (usable or [None])[0]
        if not selected.get("image"):
            runnable = [v.image for v in images if v.available]
            if runnable:
                selected["image"] = runnable[0].slug
        return render_form(profiles, images, selected)

    async def load_user_options(self) -> Resolved:
        """Check ``user_options`` against the catalogue and apply the choice to this spawn.

        Raises the hub's HTTP error with the reason (shown on the spawn page and as the REST
        API's message); saved options that no longer fit fall back to the defaults with a
        notice in the progress events and the hub log."""
        self.fermi = None
        try:
            resolved = self._resolve(self.read_catalog(), self.user_options,
                                     requested=request_carries_options(self.handler))
        except Refused as error:
            self.log.info("Refusing to start %s: %s", self._log_name, error.message)
            raise spawn_error(error.status, error.message) from None
        self.check_quota(resolved.profile.gpu)
        resolved.spec.datasets = self.resolve_datasets(resolved.datasets)
        for notice in resolved.notices:
            self.log.warning("%s: %s", self._log_name, notice)
        self.fermi = resolved
        # what runs, as it is shown in the server's model (GET /hub/api/users/NAME)
        self.user_options = resolved.user_options
        self.apply_choice(resolved)
        return resolved

    def resolve_datasets(self, refs: list[str]):
        """The datasets to attach, with the same access rules and the same rule for where they
        may be as a job's (``datasets.py``); never inside the platform's data dir."""
        if not refs:
            return []
        try:
            policy = DatasetPolicy(self.dataset_roots, self.dataset_claims,
                                   os.environ.get("FERMI_DATA_DIR") or None)
            return DatasetService(self.platform_sessions(), policy).resolve(self.caller(), refs)
        except FermiError as error:
            raise spawn_error(error.status, error.message) from None

    def check_quota(self, gpus: int) -> None:
        """The user's and their groups' quotas (GPUs at once, spend this month) — the same
        check as submitting a job or deploying, on the same database."""
        from fermi_extension.quotas.service import QuotaService

        try:
            QuotaService(self.platform_sessions()).admit(self.caller(), gpus=gpus)
        except FermiError as error:
            self.log.info("Refusing to start %s: %s", self._log_name, error.message)
            raise spawn_error(error.status, error.message) from None

    def get_env(self):
        env = super().get_env()
        if self.fermi is not None:
            spec = self.fermi.spec
            env.update({
                "FERMI_PROFILE": spec.profile,
                "FERMI_IMAGE": spec.image,
                "FERMI_IMAGE_VERSION": spec.image_version or "",
                "FERMI_PRICE_PER_HOUR": f"{spec.price_per_hour:g}",
                **spec.env,
                **{mount.env: mount.location for mount in spec.datasets},
            })
        api = getattr(self, "fermi_api_url", "")
        if api.endswith("/api") and env.get("JUPYTERHUB_API_TOKEN"):
            # MLflow in the notebook reaches the tracking server the one way workloads may:
            # through the control plane's proxy, as the user, with the server's own token
            env["MLFLOW_TRACKING_URI"] = api[: -len("/api")] + "/tracking"
            env["MLFLOW_TRACKING_TOKEN"] = env["JUPYTERHUB_API_TOKEN"]
        return env

    async def progress(self):
        resolved = self.fermi
        if resolved is not None:
            spec = resolved.spec
            yield {"progress": 5, "message": (
                f"Profile {resolved.profile.name} ({spec.profile}), image {resolved.image.name} "
                f"({spec.image}{':' + spec.image_version if spec.image_version else ''})")}
            for notice in resolved.notices:
                yield {"progress": 5, "message": notice}
        async for event in super().progress():
            yield event

    # -- the run: its record in the spawner state, and its usage record when it ends ------------

    def mark_running(self, devices: list[int] | None = None) -> None:
        """Called once the server runs: what it runs and since when, for billing and culling."""
        resolved = self.fermi
        self.fermi_run = {
            "profile": resolved.profile.slug,
            "image": resolved.image.slug,
            "image_version": resolved.version,
            "gpu": resolved.profile.gpu,
            "devices": list(devices or []),
            "price_per_hour": resolved.profile.price_per_hour,
            "idle_cull_minutes": resolved.profile.idle_cull_minutes,
            "started_at": utcnow().isoformat(),
            "notices": list(resolved.notices),
        }

    def get_state(self):
        state = super().get_state()
        if self.fermi_run:
            state["fermi"] = self.fermi_run
        return state

    def load_state(self, state):
        super().load_state(state)
        self.fermi_run = (state or {}).get("fermi") or None

    def clear_state(self):
        # the hub clears the state when the server stopped or was found gone (poll): the run ends
        self.end_run()
        super().clear_state()
        self.fermi_run = None

    def end_run(self) -> None:
        """Write the run's usage record and give back its devices; once per run."""
        run, self.fermi_run = self.fermi_run, None
        if not run:
            return
        try:
            self.release_devices()
        except Exception:
            self.log.exception("Could not release the devices of %s", self._log_name)
        try:
            record = usage_record(self.user.name, "server", f"{self.user.name}/{self.name}", run,
                                  dt.datetime.fromisoformat(run["started_at"]), utcnow())
            with self.platform_sessions()() as session:
                session.add(record)
                session.commit()
            self.log.info("%s ran %.0f s on %s", self._log_name, record.seconds, run["profile"])
        except Exception:  # billing must never break a stop
            self.log.exception("Could not record the usage of %s", self._log_name)
