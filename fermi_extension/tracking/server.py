"""The tracking server: MLflow's own server app, run in one process as a hub-managed service.

``mlflow server`` forks a uvicorn process under its CLI process; run as a hub service, a hub
killed with -9 would leave that grandchild holding the port. Here the same app runs in this
process, configured through the environment variables ``mlflow server`` itself sets, and dies
with the hub.

It listens on 127.0.0.1 only and gets no public route: users reach runs and models through the
control plane, which checks ownership.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..processes import die_with_parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fermi's MLflow tracking server")
    parser.add_argument("--data-dir", required=True, help="where runs, models and artifacts live")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
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

    uvicorn.run(
        "mlflow.server.fastapi_app:app",
        host=args.host,
        port=args.port,
        log_level="warning",
        workers=1,
    )


if __name__ == "__main__":
    main()
