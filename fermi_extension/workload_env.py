"""The environment a workload starts with: training jobs, model-server replicas and the router.

It is built from an allow-list of the platform's own environment, never from the platform's
environment minus a deny-list: the control plane's environment holds secrets under names that
change with JupyterHub versions (``JUPYTERHUB_API_TOKEN`` and its legacy copy ``JPY_API_TOKEN``),
the admin token, the proxy's token, database URLs; a deny-list misses the next one. What a
workload needs beyond this list (its run, its job id, its GPUs, its datasets) is added by the
code that starts it, by name.
"""

from __future__ import annotations

import os

WORKLOAD_ENV_ALLOWED = (
    # the basics of a process on this machine
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TZ", "TMPDIR",
    "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LC_NUMERIC", "LC_TIME",
    # the Python environment the platform runs in (the embedded default's kernels use it)
    "VIRTUAL_ENV", "LD_LIBRARY_PATH",
    # this machine's numeric libraries: some CPUs need these for a correct OpenBLAS
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
    # the site's network and package settings, which a notebook's pip or downloads need
    # (a proxy, a company CA, a PyPI mirror)
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT",
)


def workload_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The allowed part of this process's environment, plus ``extra``."""
    env = {k: os.environ[k] for k in WORKLOAD_ENV_ALLOWED if k in os.environ}
    env.update(extra or {})
    return env
