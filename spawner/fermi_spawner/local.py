"""Dev environments as local processes (the embedded default)."""

from __future__ import annotations

import os

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Unicode, default


class FermiLocalSpawner(SimpleLocalProcessSpawner):
    """A JupyterLab server per user, as a process of the platform's own Python environment.

    Every user's server runs as the operating-system user that runs Fermi, in a home folder
    of its own under the data dir: the embedded default trusts its users (see README).
    """

    fermi_api_url = Unicode(
        help="""URL of the control-plane API as seen from a dev server, handed to it as
        $FERMI_API_URL (default: $FERMI_INTERNAL_API_URL that `fermi up` sets).""",
    ).tag(config=True)

    @default("fermi_api_url")
    def _default_api_url(self):
        return os.environ.get("FERMI_INTERNAL_API_URL", "")

    @default("args")
    def _default_args(self):
        return ["--allow-root"] if os.getuid() == 0 else []

    def get_env(self):
        env = super().get_env()
        if self.fermi_api_url:
            env["FERMI_API_URL"] = self.fermi_api_url
        return env
