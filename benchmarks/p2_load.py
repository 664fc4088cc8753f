"""P2: the control plane under load.

(a) 200 job submissions from 20 users at once (asyncio + httpx, 10 per user, all 200 in flight
    together): every one must get 201. Reports accepted count and submission latency p50/p99,
    then cancels every job not yet ended through the API so the machine is not busy for minutes.
    Done twice: "cold" (the first submissions after start) and "warm" (right after), with the
    control plane's own time per POST read from its access log in DIR/logs/hub.log.
(b) `GET /jobs?limit=50` with 10,000 jobs stored: stops the platform, inserts 10,000 ended jobs
    into DIR/fermi.sqlite with the SQLAlchemy models (20 owners, the first with 2,000), starts it
    again and times 300 sequential list calls as that heavy user and as admin, through the public
    proxy port, interleaved with a bare `GET /hub/api/` (the proxy+HTTP baseline).

    .venv/bin/python benchmarks/p2_load.py [--json out.json]

Goals: (a) 200/200 accepted; (b) list p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import (wrap_up, record_failure, API, Platform, log, machine, make_notebook, percentile,
                    seed_ended_jobs)

USERS = 20
PER_USER = 10
SEED_JOBS = 10_000
HEAVY_SHARE = 2_000
LIST_CALLS = 300
LIST_GOAL_MS = 50.0


def user_names() -> list[str]:
    return [f"user{i:02d}" for i in range(USERS)]


async def burst(platform: Platform, tokens: dict[str, str], notebook: dict) -> dict:
    """All USERS * PER_USER submissions in flight at once; returns statuses and latencies."""
    limits = httpx.Limits(max_connections=PER_USER, max_keepalive_connections=PER_USER)
    clients = {
        name: httpx.AsyncClient(base_url=platform.url, timeout=120, limits=limits,
                                headers={"Authorization": f"token {token}"})
        for name, token in tokens.items()
    }
    start = asyncio.Event()
    results: list[dict] = []

    async def submit(name: str, i: int) -> None:
        await start.wait()
        t0 = time.perf_counter()
        try:
            response = await clients[name].post(
                f"{API}/jobs", json={"notebook": notebook, "name": f"burst-{i}"})
            status, body = response.status_code, response.text
        except httpx.HTTPError as error:
            status, body = None, f"{type(error).__name__}: {error}"
        elapsed = (time.perf_counter() - t0) * 1000
        job_id = None
        if status == 201:
            job_id = json.loads(body)["id"]
        results.append({"user": name, "status": status, "ms": elapsed, "id": job_id,
                        "error": None if status == 201 else body[:300]})

    tasks = [asyncio.create_task(submit(name, i)) for name in tokens for i in range(PER_USER)]
    await asyncio.sleep(0.1)  # every task is waiting on the start line
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    for client in clients.values():
        await client.aclose()
    return {"results": results, "wall_s": wall}


def cancel_pending(platform: Platform) -> dict:
    """Cancel every job not yet ended, through the API, as admin; wait for running ones to end."""
    counts = {"cancelled": 0, "conflict": 0, "other": 0}
    t0 = time.perf_counter()
    with platform.client(timeout=60) as admin:
        for _round in range(5):
            pending = []
            for status in ("queued", "running"):
                response = admin.get(f"{API}/jobs", params={"status": status, "limit": 500})
                response.raise_for_status()
                pending += [j["id"] for j in response.json()["jobs"]]
            if not pending:
                break
            for job_id in pending:
                response = admin.post(f"{API}/jobs/{job_id}/cancel")
                if response.status_code == 200:
                    counts["cancelled"] += 1
                elif response.status_code == 409:
                    counts["conflict"] += 1
                else:
                    counts["other"] += 1
        # everything ended, and the job processes are gone
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = admin.get(f"{API}/jobs", params={"status": "running", "limit": 10})
            if response.json()["total"] == 0:
                break
            time.sleep(0.5)
        totals = {}
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            response = admin.get(f"{API}/jobs", params={"status": status, "limit": 1})
            totals[status] = response.json()["total"]
    counts["seconds"] = round(time.perf_counter() - t0, 1)
    counts["totals_after"] = totals
    return counts


def server_side_ms(log_path: Path, offset: int, path_prefix: str, method: str = "GET",
                   status: int = 200) -> list[float]:
    """The control plane's own request times (its tornado access log lines in hub.log)."""
    pattern = re.compile(rf"fermi\] {status} {method} (\S+) \([^)]*\) ([\d.]+)ms")
    values = []
    with log_path.open("rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            match = pattern.search(line)
            if match and match.group(1).split("?")[0] == path_prefix.split("?")[0] \
                    and match.group(1).startswith(path_prefix):
                values.append(float(match.group(2)))
    return values


def stats(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(percentile(values, 50), 2),
            "p99_ms": round(percentile(values, 99), 2), "max_ms": round(max(values), 2),
            "mean_ms": round(sum(values) / len(values), 2)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir")
    args = parser.parse_args()

    info = machine()
    log(f"machine: {info}")
    tmp = Path(tempfile.mkdtemp(prefix="fermi-p2-"))
    platform = Platform(tmp / "data")
    result: dict = {"benchmark": "P2", "machine": info}
    names = user_names()
    try:
        # ---- (a) the burst -------------------------------------------------------------------
        platform.start()
        log(f"platform up in {platform.start_seconds:.1f} s on port {platform.port} ({platform.data})")
        tokens = {name: platform.create_user(name) for name in names}
        notebook = make_notebook("y = 1", parameters=None)  # one trivial cell: a quick job
        hub_log = platform.data / "logs" / "hub.log"
        # burst 1: the first submissions after start ("cold": token caches empty, first submit);
        # burst 2: the same again once the control plane has served submissions ("warm")
        for label in ("cold", "warm"):
            log(f"(a) {label}: {USERS * PER_USER} submissions from {USERS} users at once")
            offset = hub_log.stat().st_size
            outcome = asyncio.run(burst(platform, tokens, notebook))
            time.sleep(0.5)
            server = server_side_ms(hub_log, offset, f"{API}/jobs", method="POST", status=201)
            rows = outcome["results"]
            accepted = [r for r in rows if r["status"] == 201]
            errors = {}
            for r in rows:
                if r["status"] != 201:
                    errors.setdefault(str(r["status"]), r["error"])
            a = {
                "submitted": len(rows),
                "accepted_201": len(accepted),
                "burst_wall_s": round(outcome["wall_s"], 2),
                "throughput_per_s": round(len(accepted) / outcome["wall_s"], 1),
                "latency": stats([r["ms"] for r in rows]),
                "control_plane_server_side": stats(server) if server else None,
                "first_server_side_ms": server[0] if server else None,
                "errors": errors,
                "pass": len(accepted) == USERS * PER_USER,
            }
            log(f"(a) {label}: accepted {len(accepted)}/{len(rows)} in {outcome['wall_s']:.2f} s; "
                f"latency p50 {a['latency']['p50_ms']} ms, p99 {a['latency']['p99_ms']} ms, "
                f"max {a['latency']['max_ms']} ms; control plane's own time per POST: "
                f"{a['control_plane_server_side']} (first {a['first_server_side_ms']} ms); "
                f"errors: {errors or 'none'}")
            a["cancel"] = cancel_pending(platform)
            log(f"(a) cancelled through the API: {a['cancel']}")
            result[f"a_{label}"] = a

        # ---- (b) list with 10,000 jobs stored ------------------------------------------------
        log("(b) stopping the platform to seed the DB")
        platform.stop()
        if platform.leftovers:
            result.setdefault("leftover_processes", []).extend(platform.leftovers)
        t0 = time.perf_counter()
        per_owner = seed_ended_jobs(platform.db_path, SEED_JOBS, owners=names,
                                    heavy_owner_share=HEAVY_SHARE)
        seed_s = time.perf_counter() - t0
        heavy = names[0]
        log(f"(b) seeded {SEED_JOBS} ended jobs in {seed_s:.1f} s; {heavy} owns {per_owner[heavy]}, "
            f"the other {USERS - 1} own {min(list(per_owner.values())[1:])}-"
            f"{max(list(per_owner.values())[1:])} each")
        platform.start()
        log(f"(b) platform up again in {platform.start_seconds:.1f} s on port {platform.port}")
        service_port = json.loads((platform.data / "platform.json").read_text())["ports"]["service"]
        list_path = f"{API}/jobs?limit=50"
        hub_log = platform.data / "logs" / "hub.log"
        with platform.client(tokens[heavy]) as user_client, platform.client() as admin_client, \
                httpx.Client(base_url=platform.url, timeout=60) as bare_client, \
                httpx.Client(base_url=f"http://127.0.0.1:{service_port}", timeout=60,
                             headers={"Authorization": f"token {tokens[heavy]}"}) as direct_client:
            series = {
                "list_as_heavy_user": (user_client, list_path),
                "list_as_admin": (admin_client, list_path),
                "bare_hub_api": (bare_client, "/hub/api/"),
                "list_as_heavy_user_direct_no_proxy": (direct_client, list_path),
            }
            checks = {
                "heavy_user_total": user_client.get(list_path).json()["total"],
                "admin_total": admin_client.get(list_path).json()["total"],
                "page_size": len(user_client.get(list_path).json()["jobs"]),
            }
            for client, path in series.values():  # warm-up: connections, token caches
                for _ in range(10):
                    client.get(path).raise_for_status()
            offset = hub_log.stat().st_size
            timings = {name: [] for name in series}
            for _ in range(LIST_CALLS):  # interleaved, so noise hits every series alike
                for name, (client, path) in series.items():
                    t0 = time.perf_counter()
                    response = client.get(path)
                    timings[name].append((time.perf_counter() - t0) * 1000)
                    if response.status_code != 200:
                        raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
        time.sleep(0.5)  # let the log lines land
        server = server_side_ms(hub_log, offset, list_path)
        b = {
            "seeded_jobs": SEED_JOBS,
            "owners": USERS,
            "heavy_owner": heavy,
            "per_owner": per_owner,
            "seed_seconds": round(seed_s, 1),
            "checks": checks,
            "calls_per_series": LIST_CALLS,
            **{name: stats(values) for name, values in timings.items()},
            "control_plane_server_side_list": stats(server) if server else None,
        }
        base = b["bare_hub_api"]["p99_ms"]
        b["ratio_p99_heavy_user_vs_bare"] = round(b["list_as_heavy_user"]["p99_ms"] / base, 2)
        b["ratio_p99_admin_vs_bare"] = round(b["list_as_admin"]["p99_ms"] / base, 2)
        b["ratio_p50_heavy_user_vs_bare"] = round(
            b["list_as_heavy_user"]["p50_ms"] / b["bare_hub_api"]["p50_ms"], 2)
        b["ratio_p50_admin_vs_bare"] = round(
            b["list_as_admin"]["p50_ms"] / b["bare_hub_api"]["p50_ms"], 2)
        b["goal"] = f"list p99 <= {LIST_GOAL_MS} ms (heavy user and admin)"
        b["pass"] = (b["list_as_heavy_user"]["p99_ms"] <= LIST_GOAL_MS
                     and b["list_as_admin"]["p99_ms"] <= LIST_GOAL_MS)
        result["b"] = b
        result["loadavg_at_end"] = os.getloadavg()
        print()
        for label in ("cold", "warm"):
            a = result[f"a_{label}"]
            print(f"P2a {label}: accepted {a['accepted_201']}/{a['submitted']} "
                  f"({'PASS' if a['pass'] else 'FAIL'}) in {a['burst_wall_s']} s; submission "
                  f"latency p50 {a['latency']['p50_ms']} ms, p99 {a['latency']['p99_ms']} ms")
        for name in series:
            print(f"P2b {name:38s} p50 {b[name]['p50_ms']:7.2f} ms  p99 {b[name]['p99_ms']:7.2f} ms")
        if server:
            print(f"P2b control-plane server-side list time  p50 {b['control_plane_server_side_list']['p50_ms']:7.2f} ms"
                  f"  p99 {b['control_plane_server_side_list']['p99_ms']:7.2f} ms")
        print(f"P2b p99 ratio vs bare /hub/api/: heavy user {b['ratio_p99_heavy_user_vs_bare']}, "
              f"admin {b['ratio_p99_admin_vs_bare']}; goal p99 <= {LIST_GOAL_MS} ms: "
              f"{'PASS' if b['pass'] else 'FAIL'}")
    except Exception as error:
        record_failure(result, platform, error)
    finally:
        platform.stop()
        if platform.leftovers:
            result.setdefault("leftover_processes", []).extend(platform.leftovers)
        wrap_up(args, result, tmp)
    ok = (result.get("a_cold", {}).get("pass") and result.get("a_warm", {}).get("pass")
          and result.get("b", {}).get("pass"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
