"""A workload's environment is an allow-list of the platform's (issue 12, hole 4)."""

from __future__ import annotations

from fermi_extension.workload_env import workload_env


def test_secrets_of_the_platform_do_not_reach_a_workload(monkeypatch):
    secrets = {"JPY_API_TOKEN": "legacy-copy", "JUPYTERHUB_API_TOKEN": "hub", "FERMI_ADMIN_TOKEN":
               "admin", "CONFIGPROXY_AUTH_TOKEN": "proxy", "FERMI_DB_URL": "postgresql://u:p@db/f",
               "FERMI_PROXY_TOKEN": "proxy2", "SOME_NEW_SECRET": "tomorrow's name"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    env = workload_env({"MLFLOW_RUN_ID": "r1"})
    assert not set(secrets) & set(env)
    assert env["PATH"] == "/usr/bin" and env["HTTPS_PROXY"] == "http://proxy.example:3128"
    assert env["MLFLOW_RUN_ID"] == "r1"
