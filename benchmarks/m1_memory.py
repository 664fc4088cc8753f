"""M1: memory of the idle platform, and of the control plane with 10,000 jobs stored.

1. Starts a platform, lets it settle, and reads RSS and PSS (psutil memory_full_info) of every
   descendant of the `fermi up` process (hub, proxy, control plane, job launcher, tracking
   server, and the inference router, which the control plane starts even with no deployment). Measured twice: freshly started ("cold idle"), and idle again after one job has run
   ("warm idle": the control plane has imported nbformat, MLflow has opened its store).
2. The control plane's RSS just before and after inserting 10,000 ended jobs (same seeding as
   P2(b), done live: SQLite in WAL mode lets this process write while the platform reads) and
   300 `GET /jobs?limit=50` as the heavy owner plus 300 as admin.

    .venv/bin/python benchmarks/m1_memory.py [--json out.json]

Goals: idle total <= 600 MB; control-plane RSS after <= before * 1.10.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

from common import (stop_and_wrap_up, record_failure, API, ENDED, Platform, classify, log, machine, make_notebook, process_by_role,
                    seed_ended_jobs, short_cmd, stop_on_sigterm, timed_gets)

MB = 1024 * 1024
IDLE_GOAL_MB = 600
GROWTH_GOAL = 1.10
SETTLE_S = 20


def snapshot(platform: Platform) -> dict:
    rows = []
    for proc in platform.descendants():
        try:
            full = proc.memory_full_info()
            rows.append({"pid": proc.pid, "role": classify(proc), "cmd": short_cmd(proc),
                         "rss_mb": round(full.rss / MB, 1), "pss_mb": round(full.pss / MB, 1),
                         "uss_mb": round(full.uss / MB, 1)})
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    rows.sort(key=lambda r: -r["rss_mb"])
    up = psutil.Process(platform.process.pid).memory_full_info()
    return {
        "processes": rows,
        "total_rss_mb": round(sum(r["rss_mb"] for r in rows), 1),
        "total_pss_mb": round(sum(r["pss_mb"] for r in rows), 1),
        "total_uss_mb": round(sum(r["uss_mb"] for r in rows), 1),
        "fermi_up_itself": {"pid": platform.process.pid, "rss_mb": round(up.rss / MB, 1),
                            "pss_mb": round(up.pss / MB, 1)},
    }


def show(title: str, snap: dict) -> None:
    print(f"\n{title}")
    print(f"  {'role':16s} {'pid':>7s} {'RSS MB':>8s} {'PSS MB':>8s} {'USS MB':>8s}  command")
    for r in snap["processes"]:
        print(f"  {r['role']:16s} {r['pid']:7d} {r['rss_mb']:8.1f} {r['pss_mb']:8.1f} "
              f"{r['uss_mb']:8.1f}  {r['cmd'][:70]}")
    print(f"  {'TOTAL':16s} {'':7s} {snap['total_rss_mb']:8.1f} {snap['total_pss_mb']:8.1f} "
          f"{snap['total_uss_mb']:8.1f}")
    up = snap["fermi_up_itself"]
    print(f"  (`fermi up` itself, not in the total: RSS {up['rss_mb']} MB, PSS {up['pss_mb']} MB)")


def control_plane_memory(platform: Platform) -> dict:
    proc = process_by_role(platform, "control plane")
    full = proc.memory_full_info()
    return {"pid": proc.pid, "rss_mb": round(full.rss / MB, 1), "pss_mb": round(full.pss / MB, 1),
            "uss_mb": round(full.uss / MB, 1)}


def wait_ended(client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{API}/jobs/{job_id}").json()
        if job["status"] in ENDED:
            return job
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} did not end in {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    stop_on_sigterm()

    info = machine()
    log(f"machine: {info}")
    tmp = Path(tempfile.mkdtemp(prefix="fermi-m1-"))
    platform = Platform(tmp / "data")
    result: dict = {"benchmark": "M1", "machine": info, "settle_s": SETTLE_S}
    try:
        platform.start()
        log(f"platform up in {platform.start_seconds:.1f} s on port {platform.port}; "
            f"settling {SETTLE_S} s")
        time.sleep(SETTLE_S)
        cold = snapshot(platform)
        show("M1 idle platform, freshly started (cold idle)", cold)
        result["cold_idle"] = cold
        cp_cold = control_plane_memory(platform)

        # one job, so every part has done its first real work; then idle again
        names = [f"user{i:02d}" for i in range(20)]
        token = platform.create_user(names[0])
        with platform.client(token) as client:
            response = client.post(f"{API}/jobs", json={"notebook": make_notebook("y = x * 2"),
                                                        "parameters": {"x": 2}})
            response.raise_for_status()
            job = wait_ended(client, response.json()["id"])
            log(f"one job ran: {job['status']}; settling {SETTLE_S} s")
            for _ in range(10):  # the list path's first use (imports, token cache)
                client.get(f"{API}/jobs?limit=50").raise_for_status()
        time.sleep(SETTLE_S)
        warm = snapshot(platform)
        show("M1 idle platform after one job (warm idle)", warm)
        result["warm_idle"] = warm

        # control plane before/after 10,000 jobs + 600 list calls
        before = control_plane_memory(platform)
        t0 = time.perf_counter()
        per_owner = seed_ended_jobs(platform.db_path, 10_000, owners=names, heavy_owner_share=2_000)
        seed_s = time.perf_counter() - t0
        log(f"seeded 10,000 ended jobs live in {seed_s:.1f} s ({names[0]} owns {per_owner[names[0]]})")
        after_seed = control_plane_memory(platform)
        with platform.client(token) as user, platform.client() as admin:
            user_ms = timed_gets(user, f"{API}/jobs?limit=50", 300, warmup=0)
            admin_ms = timed_gets(admin, f"{API}/jobs?limit=50", 300, warmup=0)
            totals = (user.get(f"{API}/jobs?limit=1").json()["total"],
                      admin.get(f"{API}/jobs?limit=1").json()["total"])
        after = control_plane_memory(platform)
        time.sleep(5)
        after_settled = control_plane_memory(platform)
        growth = after["rss_mb"] / before["rss_mb"]
        result["control_plane"] = {
            "cold_idle": cp_cold,
            "before": before,
            "after_seed_only": after_seed,
            "after_300_user_plus_300_admin_lists": after,
            "after_plus_5s": after_settled,
            "list_totals_user_admin": totals,
            "rss_ratio_after_vs_before": round(growth, 3),
            "rss_ratio_after_vs_cold_idle": round(after["rss_mb"] / cp_cold["rss_mb"], 3),
            "goal": f"after <= before * {GROWTH_GOAL}",
            "pass": growth <= GROWTH_GOAL,
            "list_p99_ms_user_admin": (round(sorted(user_ms)[int(0.99 * 300) - 1], 1),
                                       round(sorted(admin_ms)[int(0.99 * 300) - 1], 1)),
        }
        result["idle_goal"] = f"total <= {IDLE_GOAL_MB} MB"
        result["idle_pass"] = {
            "cold_rss": cold["total_rss_mb"] <= IDLE_GOAL_MB,
            "cold_pss": cold["total_pss_mb"] <= IDLE_GOAL_MB,
            "warm_rss": warm["total_rss_mb"] <= IDLE_GOAL_MB,
            "warm_pss": warm["total_pss_mb"] <= IDLE_GOAL_MB,
        }
        result["loadavg_at_end"] = os.getloadavg()
        print()
        for label, snap in (("cold idle", cold), ("warm idle", warm)):
            print(f"M1 {label}: total RSS {snap['total_rss_mb']} MB, PSS {snap['total_pss_mb']} MB "
                  f"(goal <= {IDLE_GOAL_MB} MB: RSS {'PASS' if snap['total_rss_mb'] <= IDLE_GOAL_MB else 'FAIL'}, "
                  f"PSS {'PASS' if snap['total_pss_mb'] <= IDLE_GOAL_MB else 'FAIL'})")
        cp = result["control_plane"]
        print(f"M1 control plane RSS: cold idle {cp_cold['rss_mb']} MB, before {before['rss_mb']} MB, "
              f"after seed {after_seed['rss_mb']} MB, after 600 lists {after['rss_mb']} MB "
              f"(+5 s: {after_settled['rss_mb']} MB); ratio {growth:.3f} "
              f"goal <= {GROWTH_GOAL}: {'PASS' if cp['pass'] else 'FAIL'}")
    except Exception as error:
        record_failure(result, platform, error)
    finally:
        stop_and_wrap_up(args, result, tmp, platform)
    ok = result.get("control_plane", {}).get("pass") and all(result.get("idle_pass", {"x": False}).values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
