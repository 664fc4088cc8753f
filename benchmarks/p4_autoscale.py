"""P4: autoscaling under load, scale-down, and a canary shift, counting every failed request.

1. Starts a platform, registers `wine-bench` versions 1 and 2 (the tabular-classifier template
   run as two jobs, C = 1.0 and C = 0.01), and deploys version 1 with min 1, max 4 replicas,
   target_concurrency 2, scale_down_delay_seconds 10.
2. Scale-up: 12 concurrent clients (threads, one keep-alive httpx client each, one-row V2 infer,
   no pause) for 40 s. A poller reads GET deployments/{name} (through the public proxy) and the
   router's admin /stats every 0.25 s. Figure: seconds from the load's start until the API shows
   a second replica `ready` AND with `requests` > 0 (the router's counters as the control plane
   last read them). The moment the router's own /stats first counts a request on it is given too.
3. Scale-down: the 12 clients stop; a light load starts at once (1 client, one request every
   50 ms) and runs on through step 4. Waits until `desired_replicas` is 1 and only one replica is
   left (the others drained and stopped).
4. Canary shift under the light load (now 2 clients, 50 ms apart): PATCH canary version 2 at 20 %;
   wait until the canary revision has a ready replica and 20 % of the traffic; 10 s of split
   traffic; PATCH promote; wait until version 2 is stable and only its replicas are left; 5 s more.

Every response is counted (status code, or the exception's class name) with its completion time,
and failures (anything but 200) are reported per phase.

    .venv/bin/python benchmarks/p4_autoscale.py [--json out.json] [--keep]

Goals: first extra replica serving <= 20 s after the load starts; 0 failed requests during
scale-up, scale-down and the canary shift (each).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import (stop_and_wrap_up, record_failure, Load, Platform, deploy, get_deployment, log, machine, register_wine_models,
                    router_stats, stop_on_sigterm, v2_body, wait_deployment, wine_rows)

MODEL = "wine-bench"
NAME = "auto"
HEAVY_CLIENTS = 12
HEAVY_SECONDS = 40
LIGHT_INTERVAL = 0.05
POLL = 0.25
SCALE_UP_GOAL_S = 20.0


class Poller:
    """Reads the deployment and the router's stats every POLL s, in a thread, into a timeline."""

    def __init__(self, platform: Platform, token: str):
        self.platform, self.token = platform, token
        self.timeline: list[dict] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.errors = 0

    def _run(self) -> None:
        with self.platform.client(self.token, timeout=10) as api:
            while not self.stop_event.is_set():
                t = time.monotonic()
                try:
                    d = get_deployment(api, NAME)
                    stats = router_stats(self.platform.data).get("deployments", {}).get(NAME, {})
                    self.timeline.append({
                        "t": t, "desired": d["desired_replicas"], "status": d["status"],
                        "version": d["version"],
                        "replicas": [(r["id"], r["revision"], r["state"], r["requests"])
                                     for r in d["replicas"]],
                        "revisions": [(r["name"], r["role"], r["traffic_percent"], r["ready_replicas"])
                                      for r in d["revisions"]],
                        "router": {rid: (r.get("state"), r.get("requests", 0))
                                   for rid, r in stats.get("replicas", {}).items()},
                        "router_in_flight": stats.get("in_flight", 0),
                    })
                except Exception:  # noqa: BLE001 — a missed sample is not a result
                    self.errors += 1
                self.stop_event.wait(max(0.0, POLL - (time.monotonic() - t)))

    def start(self) -> "Poller":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(15)

    def first(self, predicate, after: float) -> dict | None:
        for sample in list(self.timeline):
            if sample["t"] >= after and predicate(sample):
                return sample
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    stop_on_sigterm()

    info = machine()
    log(f"machine: {info}")
    result: dict = {"benchmark": "P4", "machine": info}
    tmp = Path(tempfile.mkdtemp(prefix="fermi-p4-"))
    platform = Platform(tmp / "data")
    loads: list[Load] = []
    poller: Poller | None = None
    ok = False
    try:
        platform.start()
        log(f"platform up in {platform.start_seconds:.1f} s on port {platform.port}, "
            f"router on {platform.serving_port}")
        token = platform.create_user("modeller")
        t0 = time.monotonic()
        register_wine_models(platform, token, MODEL, (1.0, 0.01))
        log(f"{MODEL} versions 1 and 2 registered in {time.monotonic() - t0:.1f} s")
        api = platform.client(token, timeout=30)
        created = deploy(api, name=NAME, model=MODEL, version="1", min_replicas=1, max_replicas=4,
                         target_concurrency=2, scale_down_delay_seconds=10)
        d, waited = wait_deployment(api, NAME, lambda d: d["status"] == "ready", 180, what="ready")
        first_id = d["replicas"][0]["id"]
        log(f"deployment ready in {waited:.1f} s with replica {first_id}")
        url = f"{created['url']}/v2/models/{MODEL}/infer"
        auth = {"Authorization": f"Bearer {created['api_key']}"}
        body = v2_body(wine_rows(1))
        poller = Poller(platform, token).start()

        # -- scale-up ---------------------------------------------------------------------------
        heavy = Load(url, body, auth, HEAVY_CLIENTS)
        loads.append(heavy)
        log(f"scale-up: {HEAVY_CLIENTS} clients for {HEAVY_SECONDS} s")
        heavy.start()
        t_up = heavy.started_at
        while time.monotonic() - t_up < HEAVY_SECONDS:
            time.sleep(1)
            last = poller.timeline[-1] if poller.timeline else {}
            log(f"  t={time.monotonic() - t_up:5.1f}s desired {last.get('desired')} replicas "
                f"{[(r[0][-6:], r[2], r[3]) for r in last.get('replicas', [])]} "
                f"router in flight {last.get('router_in_flight')}; responses so far "
                f"{heavy.outcomes()['total']}")
        heavy.stop()
        t_up_end = time.monotonic()

        def extra_api(sample):
            return any(rid != first_id and state == "ready" and requests > 0
                       for rid, _, state, requests in sample["replicas"])

        def extra_router(sample):
            ready = {rid for rid, _, state, _ in sample["replicas"] if state == "ready"}
            return any(rid != first_id and rid in ready and requests > 0
                       for rid, (_, requests) in sample["router"].items())

        def extra_ready(sample):
            return any(rid != first_id and state == "ready" for rid, _, state, _ in sample["replicas"])

        def extra_exists(sample):
            return any(rid != first_id for rid, *_ in sample["replicas"])

        marks = {}
        for key, predicate in (("first_extra_replica_started_s", extra_exists),
                               ("first_extra_replica_ready_s", extra_ready),
                               ("first_extra_serving_router_stats_s", extra_router),
                               ("first_extra_serving_api_s", extra_api)):
            sample = poller.first(predicate, t_up)
            marks[key] = round(sample["t"] - t_up, 2) if sample and sample["t"] <= t_up_end else None
        during = [s for s in poller.timeline if t_up <= s["t"] <= t_up_end]
        figure = marks["first_extra_serving_api_s"]
        up = heavy.outcomes()
        changes, previous = [], None
        for sample in during:
            if sample["desired"] != previous:
                changes.append((round(sample["t"] - t_up, 2), sample["desired"]))
                previous = sample["desired"]
        started = {rid for s in during for rid, *_ in s["replicas"]} - {first_id}
        result["scale_up"] = {
            **marks,
            "figure_s": figure,
            "goal": f"<= {SCALE_UP_GOAL_S} s",
            "pass": figure is not None and figure <= SCALE_UP_GOAL_S,
            "desired_changes_t_s": changes,
            "replicas_started": len(started),
            "max_desired": max((s["desired"] for s in during), default=None),
            "max_ready": max((sum(r[2] == "ready" for r in s["replicas"]) for s in during), default=None),
            "responses": up,
            "throughput_rps": round(up["total"] / (t_up_end - t_up), 1),
            "requests_per_replica_at_end": during[-1]["router"] if during else None,
        }
        log(f"scale-up: {up['total']} responses, {up['failed']} failed ({up['by_outcome']}); "
            f"marks {marks}; max desired {result['scale_up']['max_desired']}, "
            f"max ready {result['scale_up']['max_ready']}")

        # -- scale-down under a light load -------------------------------------------------------
        light = Load(url, body, auth, 1, interval=LIGHT_INTERVAL, want_version=True).start()
        loads.append(light)
        t_down = time.monotonic()
        log("scale-down: heavy load stopped; 1 client every 50 ms; waiting for 1 replica")
        d, waited = wait_deployment(
            api, NAME, lambda d: d["desired_replicas"] == 1 and len(d["replicas"]) == 1, 120,
            poll=0.5, what="one replica left")
        t_down_end = time.monotonic()
        desired_one = poller.first(lambda s: s["desired"] == 1, t_down)
        down = light.outcomes(t_down, t_down_end)
        result["scale_down"] = {
            "desired_back_to_1_s": round(desired_one["t"] - t_down, 2) if desired_one else None,
            "one_replica_left_s": round(waited, 2),
            "responses": down,
            "pass": down["failed"] == 0 and down["total"] > 0,
        }
        log(f"scale-down: desired 1 after {result['scale_down']['desired_back_to_1_s']} s, one replica "
            f"left after {waited:.1f} s; {down['total']} responses, {down['failed']} failed")

        # -- canary shift --------------------------------------------------------------------------
        light2 = Load(url, body, auth, 1, interval=LIGHT_INTERVAL, want_version=True).start()
        loads.append(light2)
        time.sleep(1)
        t_canary = time.monotonic()
        response = api.patch(f"/services/fermi/api/deployments/{NAME}",
                             json={"canary": {"version": "2", "traffic_percent": 20}})
        if response.status_code != 200:
            raise RuntimeError(f"PATCH canary: {response.status_code} {response.text[:300]}")
        log("canary: version 2 at 20 % requested; waiting for its replica")

        def canary_live(d):
            return any(r["role"] == "canary" and r["ready_replicas"] > 0 and r["traffic_percent"] == 20
                       for r in d["revisions"])

        d, waited = wait_deployment(api, NAME, canary_live, 120, poll=0.25, what="canary ready")
        t_split = time.monotonic()
        canary_ready_s = round(t_split - t_canary, 2)
        log(f"canary ready with 20 % after {canary_ready_s} s; 10 s of split traffic")
        time.sleep(10)
        t_promote = time.monotonic()
        response = api.patch(f"/services/fermi/api/deployments/{NAME}", json={"action": "promote"})
        if response.status_code != 200:
            raise RuntimeError(f"PATCH promote: {response.status_code} {response.text[:300]}")
        d, waited = wait_deployment(
            api, NAME, lambda d: d["version"] == "2" and d["replicas"]
            and all(r["revision"] != "r1" for r in d["replicas"])
            and all(r["state"] == "ready" for r in d["replicas"]),
            120, poll=0.25, what="version 2 only")
        promoted_s = round(time.monotonic() - t_promote, 2)
        time.sleep(5)
        t_canary_end = time.monotonic()
        for load in (light, light2):
            load.stop()
        canary = {}
        for key, (a, b) in {"whole_shift": (t_canary, t_canary_end), "split_10s": (t_split, t_promote),
                            "after_promote": (t_promote + promoted_s, t_canary_end)}.items():
            merged = {"total": 0, "failed": 0, "versions": {}, "by_outcome": {}}
            for load in (light, light2):
                o = load.outcomes(a, b)
                merged["total"] += o["total"]
                merged["failed"] += o["failed"]
                for k, v in o["versions"].items():
                    merged["versions"][k] = merged["versions"].get(k, 0) + v
                for k, v in o["by_outcome"].items():
                    merged["by_outcome"][k] = merged["by_outcome"].get(k, 0) + v
            canary[key] = merged
        split = canary["split_10s"]["versions"]
        result["canary"] = {
            "canary_ready_with_20pct_s": canary_ready_s,
            "promote_to_v2_only_s": promoted_s,
            "responses": canary,
            "v2_share_during_split": round(split.get("2", 0) / max(1, sum(split.values())), 3),
            "pass": canary["whole_shift"]["failed"] == 0 and canary["whole_shift"]["total"] > 0,
        }
        log(f"canary: promote -> v2 only after {promoted_s} s; shift {canary['whole_shift']['total']} "
            f"responses, {canary['whole_shift']['failed']} failed; split versions {split}")

        poller.stop()
        final = get_deployment(api, NAME)
        api.close()
        result["events"] = [(e["at"], e["kind"], e["message"].splitlines()[0]) for e in final["events"]]
        result["poller_errors"] = poller.errors
        result["timeline"] = [{**s, "t": round(s["t"] - t_up, 2)} for s in poller.timeline]
        result["loadavg_at_end"] = os.getloadavg()
        ok = (result["scale_up"]["pass"] and up["failed"] == 0 and result["scale_down"]["pass"]
              and result["canary"]["pass"])
        print()
        su, sd, ca = result["scale_up"], result["scale_down"], result["canary"]
        print(f"P4 scale-up: first extra replica ready and serving (API) after {su['figure_s']} s "
              f"(router /stats: {su['first_extra_serving_router_stats_s']} s; started "
              f"{su['first_extra_replica_started_s']} s, ready {su['first_extra_replica_ready_s']} s) "
              f"(goal <= {SCALE_UP_GOAL_S} s: {'PASS' if su['pass'] else 'FAIL'}); max desired "
              f"{su['max_desired']}, max ready {su['max_ready']}; desired over time (s, n) "
              f"{su['desired_changes_t_s']}, {su['replicas_started']} replicas started")
        print(f"P4 scale-up: {up['total']} responses ({su['throughput_rps']} /s), failed {up['failed']} "
              f"(goal 0: {'PASS' if up['failed'] == 0 else 'FAIL'}) {up['by_outcome']}")
        print(f"P4 scale-down: desired 1 after {sd['desired_back_to_1_s']} s, one replica left after "
              f"{sd['one_replica_left_s']} s; {sd['responses']['total']} responses, failed "
              f"{sd['responses']['failed']} (goal 0: {'PASS' if sd['pass'] else 'FAIL'})")
        print(f"P4 canary: ready at 20 % after {ca['canary_ready_with_20pct_s']} s, v2 share during the "
              f"split {ca['v2_share_during_split']}, promote -> v2 only after {ca['promote_to_v2_only_s']} s; "
              f"{ca['responses']['whole_shift']['total']} responses, failed "
              f"{ca['responses']['whole_shift']['failed']} (goal 0: {'PASS' if ca['pass'] else 'FAIL'})")
    except Exception as error:
        record_failure(result, platform, error)
    finally:
        for load in loads:
            load.stop()
        if poller is not None:
            poller.stop()
        stop_and_wrap_up(args, result, tmp, platform)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
