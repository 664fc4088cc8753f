"""JupyterHub configuration of the embedded default, as started by `fermi up`.

`fermi up` chooses the ports and the data dir and passes them in FERMI_* environment variables;
everything else is here. Each part is a plain JupyterHub setting, so an operator who knows
JupyterHub can read and change it.
"""

import os
import sys
from pathlib import Path

from fermi_extension.containers.engine import ISOLATION_ENV, Isolation

c = get_config()  # noqa: F821 — provided by JupyterHub

data = Path(os.environ["FERMI_DATA_DIR"])
ports = {name: int(os.environ[f"FERMI_{name.upper()}_PORT"])
         for name in ("public", "hub", "proxy_api", "service", "tracking")}
public_ip = os.environ.get("FERMI_IP", "127.0.0.1")
public_url = os.environ["FERMI_PUBLIC_URL"]

# -- the hub, its proxy and its database -------------------------------------------------------
c.JupyterHub.ip = public_ip
c.JupyterHub.port = ports["public"]
# with a container engine, dev servers reach the hub at the bridge's gateway (FERMI_WORKLOAD_IP,
# an address of this machine that only it and its containers reach); the proxy and the
# services on this machine reach it there too. Without one, loopback only.
isolation = Isolation.from_env()
workload_ip = os.environ.get("FERMI_WORKLOAD_IP", "") if isolation.containers else ""
c.JupyterHub.hub_ip = workload_ip or "127.0.0.1"
if workload_ip:
    c.JupyterHub.hub_connect_ip = workload_ip
c.JupyterHub.hub_port = ports["hub"]
c.JupyterHub.db_url = f"sqlite:///{data / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(data / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{ports['proxy_api']}"
c.ConfigurableHTTPProxy.auth_token = os.environ["FERMI_PROXY_TOKEN"]
c.ConfigurableHTTPProxy.pid_file = str(data / "jupyterhub-proxy.pid")
# the proxy command installed with Fermi (the pure-Python configurable-http-proxy), found next to
# this Python even when its bin folder is not on PATH
c.ConfigurableHTTPProxy.command = [str(Path(sys.executable).parent / "configurable-http-proxy")]
c.JupyterHub.log_datefmt = "%H:%M:%S"

# -- login: hashed passwords, sign-up approved by an admin --------------------------------------
c.JupyterHub.authenticator_class = "fermi_extension.authenticator.FermiAuthenticator"
c.Authenticator.admin_users = {"admin"}
c.NativeAuthenticator.open_signup = False
# who may log in is decided by NativeAuthenticator's approval (an admin authorizes each sign-up)
c.Authenticator.allow_all = True
c.NativeAuthenticator.minimum_password_length = 8
c.NativeAuthenticator.check_common_password = True

admin_token = os.environ.get("FERMI_ADMIN_TOKEN")
if admin_token:
    # an admin API token for automation: it acts as the admin user on the hub and the platform
    c.JupyterHub.api_tokens = {admin_token: "admin"}

# -- dev environments ---------------------------------------------------------------------------
home_template = str(data / "users" / "{username}")  # a user's files, whichever spawner runs
# the one switch (FERMI_BACKEND, as for jobs and deployments): pods through KubeSpawner with the
# catalogue's profiles (docs/kubernetes.md); on one machine, containers of the engine `fermi up`
# found (docs/dev-servers-in-containers.md), else processes here
if os.environ.get("FERMI_BACKEND", "local").strip().lower() == "kubernetes":
    c.JupyterHub.spawner_class = "fermi_spawner.kubernetes.FermiKubeSpawner"
    c.KubeSpawner.namespace = os.environ.get("FERMI_NAMESPACE", "fermi")
    c.KubeSpawner.cmd = ["jupyterhub-singleuser"]  # the image's, not this machine's Python
    # pods reach the hub and the control plane at addresses routable from the cluster
    if os.environ.get("FERMI_HUB_CONNECT_URL"):
        c.KubeSpawner.hub_connect_url = os.environ["FERMI_HUB_CONNECT_URL"]
    c.KubeSpawner.environment = {"FERMI_API_URL": os.environ.get(
        "FERMI_CLUSTER_API_URL", f"http://127.0.0.1:{ports['service']}/services/fermi/api")}
elif isolation.containers:
    c.JupyterHub.spawner_class = "fermi_spawner.container.FermiDockerSpawner"
    c.FermiDockerSpawner.cmd = ["jupyterhub-singleuser"]  # the image's, not this machine's Python
    c.FermiDockerSpawner.engine_url = isolation.url
    c.FermiDockerSpawner.host_home_template = home_template
    # the control plane listens on the bridge's gateway too (control_plane/app.py)
    c.FermiDockerSpawner.fermi_api_url = (
        f"http://{workload_ip or '127.0.0.1'}:{ports['service']}/services/fermi/api")
    # a server that ended by itself (out of memory) says so on the next visit of these pages
    from fermi_spawner.container import ended_notices

    c.JupyterHub.template_vars = {"announcement_home": ended_notices,
                                  "announcement_spawn": ended_notices}
else:
    c.JupyterHub.spawner_class = "fermi_spawner.local.FermiLocalSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = home_template
c.Spawner.default_url = "/lab"
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.http_timeout = 60
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    # the dev server's extension calls the control plane as its user
    "access:services!service=fermi",
    "read:users:name!user",
    "read:users:groups!user",
]
c.FermiLocalSpawner.fermi_api_url = f"http://127.0.0.1:{ports['service']}/services/fermi/api"
# the spawn form, its checks, GPU assignments and usage records use the platform's database
platform_db_url = os.environ.get("FERMI_DB_URL") or f"sqlite:///{data / 'fermi.sqlite'}"
c.FermiLocalSpawner.platform_db_url = platform_db_url
c.FermiKubeSpawner.platform_db_url = platform_db_url
c.FermiDockerSpawner.platform_db_url = platform_db_url
# several dev environments per user (/user/NAME/SERVER), each with its own profile and image
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 5

# -- the platform's services: the control plane, the idle culler and the tracking server --------
keep = {k: os.environ[k] for k in ("HOME", "PATH", "LANG", "LC_ALL", "FERMI_ADMIN_TOKEN",
                                    "FERMI_SERVICE_CONFIG", "FERMI_CATALOG", "FERMI_BACKEND",
                                    "FERMI_DATASET_ROOTS", "FERMI_DATASET_CLAIMS",
                                    # the isolation `fermi up` chose (containers/engine.py)
                                    *ISOLATION_ENV)
        if k in os.environ}
tracking_uri = f"http://127.0.0.1:{ports['tracking']}"
# the control plane's tracking proxy signs who is calling with this; only the two services hold
# it (fermi_extension/tracking/identity.py), and a new one each time the hub starts them
import secrets  # noqa: E402

tracking_secret = {"FERMI_TRACKING_SECRET": secrets.token_urlsafe(32)}
c.JupyterHub.services = [
    {
        "name": "fermi",
        "display": True,
        "url": f"http://127.0.0.1:{ports['service']}",
        "command": [sys.executable, "-m", "fermi_extension.control_plane.app"],
        "environment": {
            **keep,
            "FERMI_DATA_DIR": str(data),
            "FERMI_TRACKING_URI": tracking_uri,
            **tracking_secret,
            "FERMI_PUBLIC_URL": public_url,
            "FERMI_SERVING_PORT": os.environ["FERMI_SERVING_PORT"],
            "FERMI_SERVING_URL": os.environ["FERMI_SERVING_URL"],
            "FERMI_IP": public_ip,
        },
        "oauth_no_confirm": True,
    },
    {
        # stops idle dev servers after their profile's idle_cull_minutes (fermi_spawner.culler);
        # --timeout applies only where the catalogue cannot be read; FERMI_CULL_EVERY: seconds
        # between two looks (default 60)
        "name": "idle-culler",
        "command": [sys.executable, "-m", "fermi_spawner.culler", "--timeout=3600",
                    f"--cull-every={int(os.environ.get('FERMI_CULL_EVERY', '60'))}"],
        "environment": {**keep, "FERMI_DATA_DIR": str(data), "FERMI_DB_URL": platform_db_url},
    },
    {
        # no public route: users reach runs and models through the control plane
        "name": "tracking",
        "command": [sys.executable, "-m", "fermi_extension.tracking.server",
                    "--data-dir", str(data / "mlflow"), "--port", str(ports["tracking"])],
        # the platform database: who owns which model name (tracking/gate.py)
        "environment": {**keep, "FERMI_DB_URL": platform_db_url, **tracking_secret},
    },
]
c.JupyterHub.load_roles = [
    {"name": "user", "scopes": ["self", "access:services!service=fermi"]},
    {
        "name": "fermi-control-plane",
        "description": "What the control plane needs to know about users: names, groups, and "
                       "their servers (profile, activity) for the dashboard and cost analysis",
        "scopes": ["list:users", "read:users:name", "read:users:groups", "read:groups",
                   "read:servers"],
        "services": ["fermi"],
    },
    {
        # the scopes jupyterhub-idle-culler documents: list users, read their servers' activity,
        # stop servers; nothing else (it reads each server's profile from its user_options)
        "name": "idle-culler",
        "description": "Stop dev servers idle longer than their profile allows",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    },
]

extra = os.environ.get("FERMI_HUB_CONFIG")
if extra:  # operators and tests add to this configuration without copying it
    load_subconfig(extra)  # noqa: F821
