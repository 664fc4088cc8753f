"""Fixtures of the serving tests (module-scoped: a model is trained and saved once per module).

- ``wine``: the wine data frame and a fitted scikit-learn pipeline on it.
- ``model_dir``: that pipeline saved as an MLflow model directory (skops), as a job registers it.
"""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="module")
def wine():
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_wine(return_X_y=True, as_frame=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    return X, pipeline


@pytest.fixture(scope="module")
def model_dir(wine, tmp_path_factory):
    import mlflow.sklearn

    X, pipeline = wine
    path = tmp_path_factory.mktemp("model") / "wine"
    warnings.filterwarnings("ignore", module="mlflow")  # schema hints about integer columns
    # naming the requirements skips mlflow's inference of them (~10 s a model)
    mlflow.sklearn.save_model(pipeline, path, input_example=X[:2],
                              pip_requirements=["scikit-learn", "skops"])
    return path
