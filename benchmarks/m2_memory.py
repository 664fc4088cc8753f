"""M2: memory of an inference replica, and of the router over a long continuous load.

Starts a platform, registers `wine-bench` version 1 (the tabular-classifier template as a job)
and deploys it with one replica (min = max = 1).

1. The replica's RSS / PSS / USS (psutil ``memory_full_info``, pid from the control plane's
   `replicas` table): once ready and idle, after a 1,000-request warm-up, and every 10 s during
   the load of step 2. The figure is the largest RSS seen.
2. The router's memory every 10 s over ``--minutes`` (default 10) of continuous load: 4 client
   threads (keep-alive httpx), each one one-row V2 infer every 20 ms, i.e. ~200 requests/s. The
   first sample is taken at the start of the load, right after the warm-up; the control plane's
   RSS is sampled too, for information. Every response is counted.

    .venv/bin/python benchmarks/m2_memory.py [--minutes 10] [--json out.json] [--keep]

Goals: replica RSS <= 250 MB; router RSS last sample <= first sample * 1.10.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import (stop_and_wrap_up, record_failure, Load, Platform, deploy, log, machine, process_by_role, register_wine_models,
                    replica_rows, router_state, router_stats, rss_mb, stop_on_sigterm, v2_body,
                    wait_deployment, wine_rows)

MODEL = "wine-bench"
NAME = "mem"
REPLICA_GOAL_MB = 250
GROWTH_GOAL = 1.10
SAMPLE_EVERY = 10
CLIENTS = 4
INTERVAL = 0.02
WARMUP_REQUESTS = 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    stop_on_sigterm()

    info = machine()
    log(f"machine: {info}")
    result: dict = {"benchmark": "M2", "machine": info, "minutes": args.minutes,
                    "clients": CLIENTS, "interval_s": INTERVAL}
    tmp = Path(tempfile.mkdtemp(prefix="fermi-m2-"))
    platform = Platform(tmp / "data")
    load: Load | None = None
    ok = False
    try:
        platform.start()
        log(f"platform up in {platform.start_seconds:.1f} s on port {platform.port}, "
            f"router on {platform.serving_port}")
        router_pid = router_state(platform.data)["pid"]
        router_idle_empty = rss_mb(router_pid)
        token = platform.create_user("modeller")
        register_wine_models(platform, token, MODEL, (1.0,))
        with platform.client(token, timeout=30) as api:
            created = deploy(api, name=NAME, model=MODEL, version="1", min_replicas=1,
                             max_replicas=1, target_concurrency=2, scale_down_delay_seconds=10)
            wait_deployment(api, NAME, lambda d: d["status"] == "ready", 180, what="ready")
        replica = next(r for r in replica_rows(platform.db_path) if r["state"] == "ready")
        time.sleep(3)
        replica_idle = rss_mb(replica["pid"])
        router_idle = rss_mb(router_pid)
        url = f"{created['url']}/v2/models/{MODEL}/infer"
        auth = {"Authorization": f"Bearer {created['api_key']}"}
        body = v2_body(wine_rows(1))
        with httpx.Client(headers=auth, timeout=30) as http:
            for _ in range(WARMUP_REQUESTS):
                http.post(url, json=body).raise_for_status()
        replica_warm = rss_mb(replica["pid"])
        router_warm = rss_mb(router_pid)
        log(f"replica (pid {replica['pid']}) RSS idle {replica_idle['rss_mb']} MB, after "
            f"{WARMUP_REQUESTS} requests {replica_warm['rss_mb']} MB; router (pid {router_pid}) "
            f"RSS with no deployment {router_idle_empty['rss_mb']} MB, idle {router_idle['rss_mb']} MB, "
            f"warm {router_warm['rss_mb']} MB")

        control_plane = process_by_role(platform, "control plane")
        load = Load(url, body, auth, CLIENTS, interval=INTERVAL).start()
        t0 = load.started_at
        samples = []
        duration = args.minutes * 60
        n = 0
        while True:
            target = t0 + n * SAMPLE_EVERY
            time.sleep(max(0.0, target - time.monotonic()))
            done = load.outcomes()
            sample = {"t": round(time.monotonic() - t0, 1), "router": rss_mb(router_pid),
                      "replica": rss_mb(replica["pid"]),
                      "control_plane_rss_mb": round(control_plane.memory_info().rss / 2**20, 1),
                      "responses": done["total"], "failed": done["failed"],
                      "loadavg": os.getloadavg()[0]}
            samples.append(sample)
            if n % 6 == 0 or n * SAMPLE_EVERY >= duration:
                log(f"  t={sample['t']:6.1f}s router RSS {sample['router']['rss_mb']} MB, replica RSS "
                    f"{sample['replica']['rss_mb']} MB, control plane {sample['control_plane_rss_mb']} MB; "
                    f"{done['total']} responses, {done['failed']} failed")
            if n * SAMPLE_EVERY >= duration:
                break
            n += 1
        load.stop()
        outcomes = load.outcomes()
        stats = router_stats(platform.data).get("deployments", {}).get(NAME, {})
        first, last = samples[0]["router"], samples[-1]["router"]
        peak_router = max(s["router"]["rss_mb"] for s in samples)
        replica_peak = max([replica_idle["rss_mb"], replica_warm["rss_mb"]]
                           + [s["replica"]["rss_mb"] for s in samples])
        growth = last["rss_mb"] / first["rss_mb"]
        result.update({
            "replica": {"pid": replica["pid"], "idle": replica_idle, "after_warmup": replica_warm,
                        "last_sample": samples[-1]["replica"], "peak_rss_mb": replica_peak,
                        "goal": f"<= {REPLICA_GOAL_MB} MB RSS", "pass": replica_peak <= REPLICA_GOAL_MB},
            "router": {"pid": router_pid, "no_deployment": router_idle_empty, "idle": router_idle,
                       "after_warmup": router_warm, "first": first, "last": last,
                       "peak_rss_mb": peak_router, "ratio_last_vs_first": round(growth, 3),
                       "goal": f"last <= first * {GROWTH_GOAL}", "pass": growth <= GROWTH_GOAL},
            "responses": outcomes,
            "throughput_rps": round(outcomes["total"] / (samples[-1]["t"] or 1), 1),
            "router_stats_at_end": stats,
            "samples": samples,
            "loadavg_at_end": os.getloadavg(),
        })
        ok = result["replica"]["pass"] and result["router"]["pass"]
        print()
        print(f"M2 replica RSS: idle {replica_idle['rss_mb']} MB, after warm-up {replica_warm['rss_mb']} MB, "
              f"peak {replica_peak} MB (PSS {replica_warm['pss_mb']}, USS {replica_warm['uss_mb']} MB after "
              f"warm-up) (goal <= {REPLICA_GOAL_MB} MB: {'PASS' if result['replica']['pass'] else 'FAIL'})")
        print(f"M2 router RSS over {args.minutes:g} min of ~{CLIENTS / INTERVAL:.0f} req/s: first "
              f"{first['rss_mb']} MB, last {last['rss_mb']} MB, peak {peak_router} MB, ratio {growth:.3f} "
              f"(goal <= {GROWTH_GOAL}: {'PASS' if result['router']['pass'] else 'FAIL'}); "
              f"{outcomes['total']} responses ({result['throughput_rps']} /s), {outcomes['failed']} failed")
    except Exception as error:
        record_failure(result, platform, error)
    finally:
        if load is not None:
            load.stop()
        stop_and_wrap_up(args, result, tmp, platform)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
