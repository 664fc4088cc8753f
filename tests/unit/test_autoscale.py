"""The autoscaler's decisions and the canary traffic split (pure functions, time given)."""

from fermi_extension.db import Deployment
from fermi_extension.deployments.autoscale import Autoscaler
from fermi_extension.deployments.service import traffic_split


def run(scaler: Autoscaler, current: int, timeline: list[tuple[float, float]]):
    decisions = []
    for now, in_flight in timeline:
        scaler.observe(now, in_flight)
        desired, reason = scaler.decide(now, current)
        if desired != current:
            decisions.append((now, current, desired, reason))
            current = desired
    return current, decisions


def test_scales_up_at_once_to_what_the_load_needs_within_bounds():
    scaler = Autoscaler(target=2, low=1, high=3, delay=30)
    current, decisions = run(scaler, 1, [(0, 0), (1, 5), (2, 12)])
    assert current == 3  # 12 in flight / 2 per replica = 6, capped at max 3
    assert all("scale up" in d[3] for d in decisions) and decisions[-1][2] == 3


def test_scales_down_only_after_the_stabilisation_window():
    scaler = Autoscaler(target=2, low=1, high=4, delay=10, window=1)
    current, _ = run(scaler, 1, [(0, 8), (1, 8)])
    assert current == 4
    quiet = [(2 + t, 0) for t in range(0, 15)]
    current, decisions = run(scaler, current, quiet)
    assert current == 1
    assert decisions and all("scale down" in reason for *_, reason in decisions)
    assert decisions[0][0] >= 1 + 10  # not before the window since the last high recommendation


def test_no_flapping_on_a_load_that_comes_and_goes():
    scaler = Autoscaler(target=2, low=1, high=4, delay=10, window=1)
    timeline = [(t, 8 if t % 4 < 2 else 0) for t in range(0, 40)]
    _, decisions = run(scaler, 1, timeline)
    assert len(decisions) == 1  # one scale-up, never down while bursts keep coming


def test_bounds_changes_apply_immediately():
    scaler = Autoscaler(target=2, low=2, high=5, delay=30)
    scaler.observe(0, 0)
    assert scaler.decide(0, 1)[0] == 2
    scaler = Autoscaler(target=2, low=1, high=2, delay=30)
    scaler.observe(0, 0)
    assert scaler.decide(0, 4)[0] == 2


def deployment(**fields) -> Deployment:
    return Deployment(stable_revision="r1", canary_revision=fields.get("canary"),
                      canary_percent=fields.get("percent", 0))


def test_canary_gets_its_share_only_once_it_has_a_ready_replica():
    d = deployment(canary="r2", percent=20)
    assert traffic_split(d, {"r1": 1}) == {"r1": 100}
    assert traffic_split(d, {"r1": 1, "r2": 1}) == {"r1": 80, "r2": 20}
    assert traffic_split(d, {"r2": 1}) == {"r2": 100}
    assert traffic_split(deployment(), {"r1": 2}) == {"r1": 100}


def test_noisy_steady_load_does_not_make_replicas_come_and_go():
    """The router's in-flight count is an instant reading: under a steady 12-client load it
    swings between ~1.5 and ~10.5 (seen in benchmark P4). Replicas must not follow the noise."""
    import random

    rng = random.Random(7)
    scaler = Autoscaler(target=2, low=1, high=4, delay=10)
    timeline = [(t, rng.uniform(2.5, 8.5)) for t in range(0, 120)]
    current, decisions = run(scaler, 1, timeline)
    downs = [d for d in decisions if "scale down" in d[3]]
    assert downs == [], decisions
    assert current >= 3
