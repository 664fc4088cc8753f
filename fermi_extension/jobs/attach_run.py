"""Kernel start-up code of a job: MLflow reports to the job's own run, whatever the notebook calls.

MLflow reads ``MLFLOW_RUN_ID`` only in ``start_run()``; a notebook that calls
``mlflow.sklearn.log_model(..., registered_model_name=...)`` without it would register a model
version with no run, and so no lineage back to the job. This file is installed as an IPython
start-up file of the job's kernel: when (and only when) the notebook imports ``mlflow``, the
job's run becomes its active run. Importing mlflow eagerly would cost every job seconds.
"""

import importlib.abc
import importlib.util
import os
import sys


class _AttachJobRun(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "mlflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("mlflow")
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            try:
                if module.active_run() is None:
                    module.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
            except Exception as error:  # never break the user's import
                print(f"Fermi: MLflow is not attached to this job's run: {error}", file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("MLFLOW_RUN_ID"):
    sys.meta_path.insert(0, _AttachJobRun())
