"""R2: a replica killed with SIGKILL under load: failed requests and time to a replacement.

Starts a platform, registers `wine-bench` version 1 (the tabular-classifier template as a job),
deploys it with min = max = 2 replicas and waits for both to be ready. Then 8 concurrent clients
(threads, keep-alive httpx, one-row V2 infer, no pause) run for 30 s; 8 s in, one ready replica
(pid from the control plane's `replicas` table, checked to be a model server) gets SIGKILL. The
deployment is polled every 0.2 s: the replacement time is from the kill until a replica that is
not one of the original two is `ready` and two are ready again. Every response is counted
(status code, or the exception's class name) with its completion time.

    .venv/bin/python benchmarks/r2_replica_kill.py [--json out.json] [--keep]

Goals: failed requests < 0.1 % of all; replacement ready <= 10 s after the kill.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

from common import (stop_and_wrap_up, record_failure, Load, Platform, deploy, get_deployment, log, machine, ready_replicas,
                    register_wine_models, replica_rows, router_stats, stop_on_sigterm, v2_body,
                    wait_deployment, wine_rows)

MODEL = "wine-bench"
NAME = "steady"
CLIENTS = 8
LOAD_SECONDS = 30
KILL_AT = 8
FAILED_GOAL = 0.001
REPLACE_GOAL_S = 10.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    stop_on_sigterm()

    info = machine()
    log(f"machine: {info}")
    result: dict = {"benchmark": "R2", "machine": info, "clients": CLIENTS,
                    "load_seconds": LOAD_SECONDS, "kill_at_s": KILL_AT}
    tmp = Path(tempfile.mkdtemp(prefix="fermi-r2-"))
    platform = Platform(tmp / "data")
    load: Load | None = None
    ok = False
    try:
        platform.start()
        log(f"platform up in {platform.start_seconds:.1f} s on port {platform.port}, "
            f"router on {platform.serving_port}")
        token = platform.create_user("modeller")
        register_wine_models(platform, token, MODEL, (1.0,))
        with platform.client(token, timeout=30) as api:
            created = deploy(api, name=NAME, model=MODEL, version="1", min_replicas=2,
                             max_replicas=2, target_concurrency=2, scale_down_delay_seconds=10)
            d, waited = wait_deployment(api, NAME, lambda d: len(ready_replicas(d)) >= 2, 180,
                                        what="2 ready replicas")
            original = {r["id"] for r in d["replicas"]}
            log(f"2 replicas ready in {waited:.1f} s: {sorted(original)}")
            url = f"{created['url']}/v2/models/{MODEL}/infer"
            auth = {"Authorization": f"Bearer {created['api_key']}"}
            load = Load(url, v2_body(wine_rows(1)), auth, CLIENTS).start()
            t0 = load.started_at
            time.sleep(KILL_AT)
            rows = {r["id"]: r for r in replica_rows(platform.db_path)}
            victim = next(rows[r["id"]] for r in ready_replicas(get_deployment(api, NAME))
                          if r["id"] in rows)
            process = psutil.Process(victim["pid"])
            if "fermi_extension.serving.server" not in " ".join(process.cmdline()):
                raise RuntimeError(f"pid {victim['pid']} is not a model server: {process.cmdline()}")
            before_kill = load.outcomes()
            os.kill(victim["pid"], signal.SIGKILL)
            t_kill = time.monotonic()
            log(f"t={t_kill - t0:.1f}s SIGKILL to replica {victim['id']} (pid {victim['pid']}) "
                f"after {before_kill['total']} responses")
            timeline, replaced, crash_seen = [], None, None
            while time.monotonic() - t0 < LOAD_SECONDS:
                d = get_deployment(api, NAME)
                now = time.monotonic()
                ready = {r["id"] for r in ready_replicas(d)}
                timeline.append({"t": round(now - t0, 2),
                                 "replicas": [(r["id"], r["state"], r["requests"]) for r in d["replicas"]]})
                if crash_seen is None and any(e["kind"] == "replica-crashed" for e in d["events"]):
                    crash_seen = now - t_kill
                if replaced is None and len(ready) >= 2 and ready - original:
                    replaced = now - t_kill
                    log(f"t={now - t0:.1f}s replacement {sorted(ready - original)} ready, "
                        f"{replaced:.2f} s after the kill")
                time.sleep(0.2)
            load.stop()
            t_end = time.monotonic()
            d = get_deployment(api, NAME)
            events = [(e["at"], e["kind"], e["message"].splitlines()[0]) for e in d["events"]]
        outcomes = load.outcomes()
        failed_share = outcomes["failed"] / max(1, outcomes["total"])
        failures_rel = None
        if outcomes["first_failure_at"] is not None:
            failures_rel = (round(outcomes["first_failure_at"] - t_kill, 3),
                            round(outcomes["last_failure_at"] - t_kill, 3))
        result.update({
            "victim": victim,
            "responses": outcomes,
            "throughput_rps": round(outcomes["total"] / (t_end - t0), 1),
            "failed_share": failed_share,
            "failed_goal": f"< {FAILED_GOAL:.1%}",
            "failed_pass": failed_share < FAILED_GOAL,
            "failures_first_last_s_after_kill": failures_rel,
            "crash_event_seen_s_after_kill": round(crash_seen, 2) if crash_seen is not None else None,
            "replacement_ready_s": round(replaced, 2) if replaced is not None else None,
            "replace_goal": f"<= {REPLACE_GOAL_S} s",
            "replace_pass": replaced is not None and replaced <= REPLACE_GOAL_S,
            "events": events,
            "router_stats_at_end": router_stats(platform.data).get("deployments", {}).get(NAME),
            "timeline": timeline,
            "loadavg_at_end": os.getloadavg(),
        })
        ok = result["failed_pass"] and result["replace_pass"]
        print()
        print(f"R2 responses: {outcomes['total']} ({result['throughput_rps']} /s), failed "
              f"{outcomes['failed']} = {failed_share:.4%} {outcomes['by_outcome']} (goal < "
              f"{FAILED_GOAL:.1%}: {'PASS' if result['failed_pass'] else 'FAIL'}); failures from/to "
              f"(s after the kill): {failures_rel}")
        print(f"R2 replacement ready {result['replacement_ready_s']} s after the kill (goal <= "
              f"{REPLACE_GOAL_S} s: {'PASS' if result['replace_pass'] else 'FAIL'}); crash event seen "
              f"after {result['crash_event_seen_s_after_kill']} s")
    except Exception as error:
        record_failure(result, platform, error)
    finally:
        if load is not None:
            load.stop()
        stop_and_wrap_up(args, result, tmp, platform)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
