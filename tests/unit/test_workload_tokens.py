"""Workload tokens (fermi_extension/workload_tokens.py): what a job (or a model server's storage
initializer) holds instead of a platform secret. Issued, resolved to their grant, expired by the
clock seam, revoked with their job or their deployment's version, and never stored in a form
that could be used."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from fermi_extension import workload_tokens
from fermi_extension.db import WorkloadToken
from fermi_extension.workload_tokens import Grant


def test_an_issued_token_resolves_to_its_grant(session_factory):
    token = workload_tokens.issue(session_factory, kind="job", owner="alice", job_id="j1",
                                  run_id="r1")
    assert len(token) >= 40  # 32 random bytes, URL-safe
    assert workload_tokens.resolve(session_factory, token) == Grant("job", "alice", "j1", "r1")


def test_only_the_hash_is_stored(session_factory):
    token = workload_tokens.issue(session_factory, kind="job", owner="alice", job_id="j1")
    with session_factory() as session:
        rows = session.scalars(select(WorkloadToken)).all()
    assert [r.digest for r in rows] == [workload_tokens.digest(token)]
    stored = [str(v) for r in rows for v in vars(r).values()]
    assert not any(token in value for value in stored)


def test_unknown_empty_and_near_miss_tokens_resolve_to_nothing(session_factory):
    token = workload_tokens.issue(session_factory, kind="job", owner="alice", job_id="j1")
    assert workload_tokens.resolve(session_factory, "") is None
    assert workload_tokens.resolve(session_factory, "not-a-token") is None
    assert workload_tokens.resolve(session_factory, token[:-1]) is None
    # the digest itself is not a token
    assert workload_tokens.resolve(session_factory, workload_tokens.digest(token)) is None


def test_an_expired_token_resolves_to_nothing(session_factory, clock):
    token = workload_tokens.issue(session_factory, kind="job", owner="alice", job_id="j1",
                                  ttl=60)
    clock.advance(seconds=59)
    assert workload_tokens.resolve(session_factory, token) is not None
    clock.advance(seconds=1)
    assert workload_tokens.resolve(session_factory, token) is None


def test_revoking_a_job_revokes_its_tokens_and_no_others(session_factory):
    first = workload_tokens.issue(session_factory, kind="job", owner="alice", job_id="j1")
    second = workload_tokens.issue(session_factory, kind="job", owner="alice", job_id="j1")
    other = workload_tokens.issue(session_factory, kind="job", owner="bob", job_id="j2")
    assert first != second
    assert workload_tokens.revoke(session_factory, job_id="j1") == 2
    assert workload_tokens.resolve(session_factory, first) is None
    assert workload_tokens.resolve(session_factory, second) is None
    assert workload_tokens.resolve(session_factory, other) == Grant("job", "bob", "j2", None)
    assert workload_tokens.revoke(session_factory, job_id="j1") == 0


def test_a_model_servers_token_is_revoked_with_its_version_of_its_deployment(session_factory):
    def fetch_token(deployment, version):
        return workload_tokens.issue(session_factory, kind="replica", owner="alice",
                                     deployment=deployment, model=f"models:/wine/{version}")

    stable, canary, elsewhere = fetch_token("wine", "1"), fetch_token("wine", "2"), \
        fetch_token("wine-eu", "1")
    assert workload_tokens.resolve(session_factory, stable) == Grant(
        "replica", "alice", deployment="wine", model="models:/wine/1")
    # the deployment stops running version 1: that token goes, version 2's and the other
    # deployment's (same version) stay
    assert workload_tokens.revoke(session_factory, deployment="wine", model="models:/wine/1") == 1
    assert workload_tokens.resolve(session_factory, stable) is None
    assert workload_tokens.resolve(session_factory, canary) is not None
    assert workload_tokens.resolve(session_factory, elsewhere) is not None
    assert workload_tokens.revoke(session_factory, deployment="wine") == 1  # all of it, deleted
    assert workload_tokens.resolve(session_factory, canary) is None
    with pytest.raises(ValueError, match="job_id or of a deployment"):
        workload_tokens.revoke(session_factory)


def test_an_unknown_kind_is_refused(session_factory):
    with pytest.raises(ValueError, match="kind"):
        workload_tokens.issue(session_factory, kind="admin", owner="alice")


# -- the caller the proxy hands on with a token's grant (tracking/identity.py) --------------------

def test_signed_caller_headers_hold_for_their_request_only():
    from fermi_extension.caller import Caller
    from fermi_extension.tracking import identity

    secret = b"s" * 32
    who = identity.TrackingCaller(Caller("alice"), Grant("job", "alice", "j1", "r1"))
    headers = identity.sign(secret, "POST", "/api/2.0/mlflow/runs/log-metric", who, now=1000)
    payload, signature = headers[identity.CALLER_HEADER], headers[identity.SIGNATURE_HEADER]
    assert identity.verify(secret, "POST", "/api/2.0/mlflow/runs/log-metric", payload,
                           signature, now=1010) == who
    assert not who.admin and who.describe() == "the token of job j1 (run r1)"
    server = identity.TrackingCaller(Caller("alice"), Grant("replica", "alice", deployment="wine",
                                                            model="models:/wine/1"))
    headers = identity.sign(secret, "GET", "/x", server, now=1000)  # its scope travels signed
    assert identity.verify(secret, "GET", "/x", headers[identity.CALLER_HEADER],
                           headers[identity.SIGNATURE_HEADER], now=1000) == server
    refused = [
        (b"t" * 32, "POST", "/api/2.0/mlflow/runs/log-metric", payload, signature, 1010),
        (secret, "GET", "/api/2.0/mlflow/runs/log-metric", payload, signature, 1010),
        (secret, "POST", "/api/2.0/mlflow/runs/delete", payload, signature, 1010),
        (secret, "POST", "/api/2.0/mlflow/runs/log-metric",
         identity.sign(secret, "POST", "/x", identity.TrackingCaller(Caller("admin", admin=True)),
                       now=1000)[identity.CALLER_HEADER], signature, 1010),
        (secret, "POST", "/api/2.0/mlflow/runs/log-metric", payload, signature,
         1000 + identity.MAX_AGE_SECONDS + 1),
        (b"", "POST", "/api/2.0/mlflow/runs/log-metric", payload, signature, 1010),
    ]
    for args in refused:
        with pytest.raises(identity.BadSignature):
            identity.verify(*args[:5], now=args[5])


def test_a_workload_is_never_an_admin_even_for_an_admin_owner():
    from fermi_extension.caller import Caller
    from fermi_extension.tracking.identity import TrackingCaller

    assert TrackingCaller(Caller("admin", admin=True)).admin
    assert not TrackingCaller(Caller("admin", admin=True), Grant("job", "admin", "j", "r")).admin
