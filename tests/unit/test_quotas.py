"""Quotas: who may set them, what counts against them, and how the queue and submissions obey."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from fermi_extension.caller import Caller
from fermi_extension.db import (AuditEvent, Deployment, GpuAssignment, Job, UsageRecord,
                                make_session_factory, utcnow)
from fermi_extension.errors import Forbidden, InvalidInput, NotFound
from fermi_extension.jobs.queue import Waiting, plan_starts
from fermi_extension.catalog.schema import Pool
from fermi_extension.quotas.service import QuotaLimits, QuotaService

ADMIN = Caller("root", admin=True)
ALICE = Caller("alice", groups=("lab",))
BOB = Caller("bob", groups=("lab",))


@pytest.fixture
def sessions():
    return make_session_factory("sqlite://")


@pytest.fixture
def quotas(sessions):
    return QuotaService(sessions)


def running_job(session, owner: str, gpus: int = 0) -> None:
    session.add(Job(name="j", owner=owner, status="running", image="i", profile="p", pool="cpu",
                    runtime={"gpu": gpus}, notebook_name="n.ipynb"))


def test_only_admins_set_quotas_and_each_change_is_audited(quotas, sessions):
    with pytest.raises(Forbidden, match="admins"):
        quotas.put(ALICE, "user", "alice", QuotaLimits(gpus=8))
    with pytest.raises(InvalidInput, match="scope"):
        quotas.put(ADMIN, "team", "alice", QuotaLimits(gpus=1))
    quotas.put(ADMIN, "user", "alice", QuotaLimits(gpus=1, running_jobs=2))
    quotas.put(ADMIN, "group", "lab", QuotaLimits(monthly_spend=100))
    quotas.put(ADMIN, "user", "carol", QuotaLimits(deployments=1))
    # users see the quotas that apply to them, admins all
    assert {(q.scope, q.subject) for q in quotas.list(ALICE).quotas} == {
        ("user", "alice"), ("group", "lab")}
    assert len(quotas.list(ADMIN).quotas) == 3
    with sessions() as session:
        actions = [(a.action, a.target_id) for a in session.scalars(select(AuditEvent))]
    assert actions == [("set-quota", "alice"), ("set-quota", "lab"), ("set-quota", "carol")]
    with pytest.raises(Forbidden):
        quotas.delete(ALICE, "user", "alice")
    quotas.delete(ADMIN, "user", "carol")
    with pytest.raises(NotFound):
        quotas.delete(ADMIN, "user", "carol")


def test_gpus_count_jobs_dev_servers_and_replicas_together(quotas, sessions):
    quotas.put(ADMIN, "user", "alice", QuotaLimits(gpus=4))
    with sessions() as session:
        running_job(session, "alice", gpus=2)
        session.add(GpuAssignment(device=0, holder="server:alice/"))
        session.add(GpuAssignment(device=1, holder="server:bob/"))  # not hers
        session.commit()
        assert quotas.refusal(session, "alice", ALICE.groups, gpus=1) is None  # 3 + 1 ≤ 4
        reason = quotas.refusal(session, "alice", ALICE.groups, gpus=2)
        assert "quota of 4 GPUs in use is reached (3 in use, 2 more asked)" in reason
    mine = quotas.mine(ALICE)
    assert mine.use.gpus == 3 and mine.limits[0].source == "user:alice"


def test_a_group_quota_counts_all_its_members(quotas, sessions):
    quotas.put(ADMIN, "group", "lab", QuotaLimits(running_jobs=2))
    quotas.admit(BOB)  # the hub told us bob is in "lab"
    with sessions() as session:
        running_job(session, "bob")
        running_job(session, "bob")
        session.commit()
    with pytest.raises(Forbidden, match="group 'lab'"):
        quotas.admit(ALICE, running_jobs=1)
    assert quotas.refusal(sessions(), "outsider", (), running_jobs=1) is None


def test_monthly_spend_counts_this_month_only(quotas, sessions):
    quotas.put(ADMIN, "user", "alice", QuotaLimits(monthly_spend=10))
    now = utcnow()
    with sessions() as session:
        for ended, cost in ((now - dt.timedelta(days=40), 50.0), (now, 9.5)):
            session.add(UsageRecord(user="alice", kind="job", ref="x", profile="p",
                                    started_at=ended, ended_at=ended, seconds=1,
                                    price_per_hour=1, cost=cost))
        session.commit()
    quotas.admit(ALICE)  # 9.5 of 10 spent: still allowed
    with sessions() as session:
        session.add(UsageRecord(user="alice", kind="job", ref="y", profile="p", started_at=now,
                                ended_at=now, seconds=1, price_per_hour=1, cost=0.5))
        session.commit()
    with pytest.raises(Forbidden, match="10 spend this month is reached"):
        quotas.admit(ALICE)


def test_deployments_quota(quotas, sessions):
    quotas.put(ADMIN, "user", "alice", QuotaLimits(deployments=1))
    quotas.admit(ALICE, deployments=1)
    with sessions() as session:
        session.add(Deployment(name="d", owner="alice", model="m", engine="auto", profile="p",
                               runtime={"gpu": 0}, min_replicas=1, max_replicas=1,
                               target_concurrency=1, desired_replicas=1, stable_revision="r1",
                               key_hash="x"))
        session.commit()
    with pytest.raises(Forbidden, match="1 deployments"):
        quotas.admit(ALICE, deployments=1)


def test_the_queue_passes_over_a_job_held_back_by_its_owners_quota():
    pools = {"cpu": Pool(slug="cpu", name="CPU", max_running_jobs=4, gpus=0)}
    queued = [Waiting("a1", "cpu", 0, "alice"), Waiting("a2", "cpu", 0, "alice"),
              Waiting("b1", "cpu", 0, "bob")]
    # alice may run one more job: her second waits, bob's behind it is not held back
    allowed = {"alice": 1}

    def held_back(job):
        if allowed.get(job.owner, 99) <= 0:
            return True
        allowed[job.owner] = allowed.get(job.owner, 99) - 1
        return False

    assert plan_starts(queued, {}, pools, held_back) == ["a1", "b1"]


def test_group_membership_follows_the_hub(quotas, sessions):
    from fermi_extension.db import GroupMember

    def remembered():
        with sessions() as session:
            return sorted(session.scalars(select(GroupMember.group).where(GroupMember.user == "alice")))

    quotas.admit(Caller("alice", groups=("lab", "nlp")))
    assert remembered() == ["lab", "nlp"]
    quotas.admit(Caller("alice", groups=()))  # removed from every group in the hub
    assert remembered() == []
