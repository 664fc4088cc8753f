"""M1: memory of the idle platform, and of the control plane with 10,000 jobs stored.

1. Starts a platform, lets it settle, and reads RSS and PSS (psutil memory_full_info) of every
   descendant of the `fermi up` process (hub, proxy, control plane, job launcher, tracking
   server, and the inference router, which the control plane starts even with no deployment). Measured twice: freshly started ("cold idle"), and idle again after one job has run
   ("warm idle": the control plane has imported nbformat, MLflow has opened its store).
2. The control plane's RSS just before and after inserting 10,000 ended jobs (same seeding as
   P2(b), done live: SQLite in WAL mode lets this process write while the platform reads) and
   300 `GET /jobs?limit=50` as the heavy owner plus 300 as admin.

    .venv/bin/python benchmarks/m1_memory.py [--json out.json] [--containers]

Goals: idle total <= 600 MB; control-plane RSS after <= before * 1.10.

M1c (``--containers``): the platform in container mode (`fermi up` with podman). The idle total
then also counts the engine service, `podman system service` on the socket in the data dir
(started by `fermi up`, found by that socket in its command line). The platform's containers
(found through the engine by their ``org.fermi.platform`` label) are reported beside it, not
counted: the warm pool (``org.fermi.kind=warm``, a kernel ready in each) and the network
anchor (``kind=network``, a `sleep` that keeps podman's bridge up), each as RSS / PSS / USS of
the container's processes (its init's pid from the engine and every descendant), its conmon
apart, and its memory cgroup's usage (page cache included). Part 2 (10,000 jobs) is not run in
this mode: it does not depend on the isolation and is M1's.
Goal (issue 14): idle total (hub, proxy, control plane, tracking, router, engine service)
<= 600 MB, the warm pool counted separately.
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
                    seed_ended_jobs, short_cmd, stop_on_sigterm, timed_gets, container_memory, engine_client,
                    engine_service_process, engine_url, platform_containers)

MB = 1024 * 1024
IDLE_GOAL_MB = 600
GROWTH_GOAL = 1.10
SETTLE_S = 20


def role_of(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    if "podman" in cmd and "system service" in cmd:
        return "engine service"
    return classify(proc)


def containers_snapshot(client, platform: Platform) -> tuple[dict, set[int]]:
    """The platform's running containers by kind (warm pool, network anchor, any other), and
    the pids of their processes and conmons (kept out of the platform's rows)."""
    groups: dict[str, dict] = {}
    pids: set[int] = set()
    names = {"warm": "warm pool", "network": "network anchor"}
    for container in platform_containers(client, platform):
        row = container_memory(container)
        group = groups.setdefault(names.get(row["kind"], row["kind"]), {
            "containers": [], "rss_mb": 0.0, "pss_mb": 0.0, "uss_mb": 0.0, "conmon_rss_mb": 0.0,
            "cgroup_mb": 0.0})
        group["containers"].append(row)
        for key in ("rss_mb", "pss_mb", "uss_mb", "conmon_rss_mb", "cgroup_mb"):
            group[key] = round(group[key] + (row.get(key) or 0.0), 1)
        if row["pid"]:
            try:
                init = psutil.Process(row["pid"])
                pids.update([init.pid, init.ppid()] + [c.pid for c in init.children(recursive=True)])
            except psutil.Error:
                pass
    return groups, pids


def snapshot(platform: Platform, client=None) -> dict:
    rows = []
    containers, container_pids = containers_snapshot(client, platform) if client else ({}, set())
    procs = [p for p in platform.descendants() if p.pid not in container_pids]
    if client is not None:
        service = engine_service_process(platform)
        if service is not None and service.pid not in {p.pid for p in procs}:
            procs.append(service)
    for proc in procs:
        try:
            full = proc.memory_full_info()
            rows.append({"pid": proc.pid, "role": role_of(proc), "cmd": short_cmd(proc),
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
        **({"containers_not_counted": containers,
            "engine_service_found": any(r["role"] == "engine service" for r in rows)}
           if client is not None else {}),
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
    if "containers_not_counted" in snap:
        if not snap["engine_service_found"]:
            print("  (no engine service of this data dir found: the engine is not one `fermi up` "
                  "started)")
        print("  the platform's containers, beside it (not in the total):")
        print(f"  {'group':16s} {'n':>3s} {'RSS MB':>8s} {'PSS MB':>8s} {'USS MB':>8s} "
              f"{'conmon':>7s} {'cgroup':>7s}  containers")
        for group, g in snap["containers_not_counted"].items():
            print(f"  {group:16s} {len(g['containers']):3d} {g['rss_mb']:8.1f} {g['pss_mb']:8.1f} "
                  f"{g['uss_mb']:8.1f} {g['conmon_rss_mb']:7.1f} {g['cgroup_mb']:7.1f}  "
                  + ", ".join(f"{c['name']} ({c['processes']} processes)" for c in g["containers"]))
        if not snap["containers_not_counted"]:
            print("  (none running)")


def control_plane_memory(platform: Platform) -> dict:
    proc = process_by_role(platform, "control plane")
    full = proc.memory_full_info()
    return {"pid": proc.pid, "rss_mb": round(full.rss / MB, 1), "pss_mb": round(full.pss / MB, 1),
            "uss_mb": round(full.uss / MB, 1)}


def wait_ended(client, job_id: str, timeout: float = 300) -> dict:
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
    parser.add_argument("--containers", action="store_true",
                        help="M1c: the platform in container mode (needs podman)")
    args = parser.parse_args()
    stop_on_sigterm()

    info = machine()
    log(f"machine: {info}")
    name = "M1c" if args.containers else "M1"
    tmp = Path(tempfile.mkdtemp(prefix="fermi-m1c-" if args.containers else "fermi-m1-"))
    platform = Platform(tmp / "data", containers=args.containers)
    result: dict = {"benchmark": name, "machine": info, "settle_s": SETTLE_S,
                    "isolation": "containers" if args.containers else "processes"}
    engine = None
    try:
        platform.start(timeout=900 if args.containers else 240)
        if args.containers:
            url = engine_url(platform)
            if not url:
                raise RuntimeError("the platform did not start in container mode:\n"
                                   + "".join(platform.output))
            engine = engine_client(url)
            result["engine_url"] = url
        log(f"platform up in {platform.start_seconds:.1f} s on port {platform.port}; "
            f"settling {SETTLE_S} s")
        time.sleep(SETTLE_S)
        cold = snapshot(platform, engine)
        show(f"{name} idle platform, freshly started (cold idle)", cold)
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
        warm = snapshot(platform, engine)
        show(f"{name} idle platform after one job (warm idle)", warm)
        result["warm_idle"] = warm

        # control plane before/after 10,000 jobs + 600 list calls (M1's; not in container
        # mode: it does not depend on the isolation)
        if not args.containers:
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
        counted = " (engine service included)" if args.containers else ""
        for label, snap in (("cold idle", cold), ("warm idle", warm)):
            print(f"{name} {label}: total RSS {snap['total_rss_mb']} MB, PSS {snap['total_pss_mb']} MB{counted} "
                  f"(goal <= {IDLE_GOAL_MB} MB: RSS {'PASS' if snap['total_rss_mb'] <= IDLE_GOAL_MB else 'FAIL'}, "
                  f"PSS {'PASS' if snap['total_pss_mb'] <= IDLE_GOAL_MB else 'FAIL'})")
            if args.containers:
                service = [r for r in snap["processes"] if r["role"] == "engine service"]
                beside = "; ".join(
                    f"{group} ({len(g['containers'])}): RSS {g['rss_mb']} MB, PSS {g['pss_mb']} MB, "
                    f"conmon RSS {g['conmon_rss_mb']} MB, cgroup {g['cgroup_mb']} MB"
                    for group, g in snap["containers_not_counted"].items()) or "none"
                print(f"{name} {label}: engine service RSS "
                      f"{service[0]['rss_mb'] if service else 'not found'} MB; not counted: {beside}")
        if args.containers:
            result["pass"] = all(result["idle_pass"].values())
        else:
            cp = result["control_plane"]
            print(f"M1 control plane RSS: cold idle {cp_cold['rss_mb']} MB, before {before['rss_mb']} MB, "
                  f"after seed {after_seed['rss_mb']} MB, after 600 lists {after['rss_mb']} MB "
                  f"(+5 s: {after_settled['rss_mb']} MB); ratio {growth:.3f} "
                  f"goal <= {GROWTH_GOAL}: {'PASS' if cp['pass'] else 'FAIL'}")
    except Exception as error:
        record_failure(result, platform, error)
    finally:
        if engine is not None:
            engine.close()
        stop_and_wrap_up(args, result, tmp, platform)
    idle_ok = all(result.get("idle_pass", {"x": False}).values())
    ok = idle_ok and (args.containers or result.get("control_plane", {}).get("pass"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
