"""The tracking server: MLflow's own server app, run in one process as a hub-managed service.

``mlflow server`` forks a uvicorn process under its CLI process; run as a hub service, a hub
killed with -9 would leave that grandchild holding the port. Here the same app runs in this
process, configured through the environment variables ``mlflow server`` itself sets, and dies
with the hub.

It listens on 127.0.0.1 only and gets no public route: jobs and users reach it through the
control plane's tracking proxy (``control_plane/tracking_proxy.py``), with a token, and the
proxy names the caller in headers signed with $FERMI_TRACKING_SECRET (``identity.py``). MLflow's
app runs behind ``gate.RegistryGate``, which holds the rules: model names, and what each caller
may reach.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..db import platform_db_url_from_env
from ..processes import die_with_parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fermi's MLflow tracking server")
    parser.add_argument("--data-dir", required=True, help="where runs, models and artifacts live")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--platform-db", default=platform_db_url_from_env(),
        help="the platform database, where model ownership is checked (default: $FERMI_DB_URL, "
             "else fermi.sqlite in $FERMI_DATA_DIR)")
    args = parser.parse_args(argv)
    if not args.platform_db:
        parser.error("--platform-db (or $FERMI_DB_URL / $FERMI_DATA_DIR) is needed: model "
                     "versions are checked against the platform's owners")
    die_with_parent()

    data = Path(args.data_dir)
    (data / "artifacts").mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{data / 'mlflow.db'}"

    from mlflow.server import (
        ARTIFACT_ROOT_ENV_VAR,
        ARTIFACTS_DESTINATION_ENV_VAR,
        BACKEND_STORE_URI_ENV_VAR,
        REGISTRY_STORE_URI_ENV_VAR,
        SERVE_ARTIFACTS_ENV_VAR,
    )

    os.environ.update(
        {
            BACKEND_STORE_URI_ENV_VAR: store,
            REGISTRY_STORE_URI_ENV_VAR: store,
            ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/",
            SERVE_ARTIFACTS_ENV_VAR: "true",
            ARTIFACTS_DESTINATION_ENV_VAR: str(data / "artifacts"),
            # one machine: no background job runner (FACTS.md: it costs ~2.6 GB for nothing here)
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "_MLFLOW_SGI_NAME": "uvicorn",
        }
    )
    import uvicorn
    from mlflow.server.fastapi_app import app

    from .gate import RegistryGate

    uvicorn.run(
        RegistryGate(app, args.platform_db),
        host=args.host,
        port=args.port,
        log_level="warning",
        workers=1,
    )


if __name__ == "__main__":
    main()
