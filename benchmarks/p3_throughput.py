"""P3: inference throughput at a deployment's URL against MLServer serving the same model alone,
tuned as its users tune it, and what the router costs (added p50 latency, CPU per request).

1. Starts a platform (with `--serving-port`), registers `wine-bench` version 1 by running the
   tabular-classifier template as a job, and deploys it with exactly one replica (min = max = 1).
2. Starts MLServer 1.7 from its own venv (benchmarks/common.py `ensure_mlserver_venv`, with
   `uvloop<0.22`, see FACTS.md), serving the same model version twice, with adaptive batching on
   (`max_batch_size` 8, `max_batch_time` 0.002 s: what MLServer's docs advise for throughput):
   - `wine-bench` with the sklearn runtime (`mlserver_sklearn.SKLearnModel`), loading the very
     pipeline the job logged (model.skops, re-saved as model.joblib with the same scikit-learn
     version). It takes the same payload as Fermi: one FP64 tensor `input-0` of shape [1, 13].
     This is the baseline of the goal.
   - `wine-bench-mlflow` with the MLflow runtime (`mlserver_mlflow.MLflowRuntime`) on the
     model's MLflow directory, sent the same row as 13 tensors of shape [1, 1], one per column
     (its column signature refuses `input-0`). Shown for information only.
   MLServer runs once per `parallel_workers` setting (0 and 1 by default); the baseline is its
   best.
3. `wrk -t1 -c8 -d{SECONDS}s` with a one-row V2 infer: ROUNDS rounds of each target per MLServer
   setting, interleaved (the order rotates every round), after a 3 s warm-up of each.
4. Router's added latency: `wrk -t1 -c1 --latency` at the deployment URL and directly at the
   replica's own URL (with the replica's key, as the router sends it), ROUNDS rounds interleaved.
   Also MLServer (sklearn runtime, last setting) at -c1 for information.

CPU seconds used by the router, the replica, MLServer and wrk itself during each run are kept
(psutil / RUSAGE_CHILDREN), to see where the time goes.

    .venv/bin/python benchmarks/p3_throughput.py [--json out.json] [--keep] [--mlserver-venv DIR]
        [--rounds 3] [--seconds 10] [--parallel-workers 0,1]

Goals: Fermi req/s (median) / best tuned MLServer sklearn-runtime req/s (median) >= 3.0; router
CPU per request <= 25 % of the replica's (median over Fermi's -c8 runs); router p50 (median) -
replica-direct p50 (median) <= 0.1 ms.
Needs `wrk` on PATH (exit 2 when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from common import (MLSERVER_VENV, ensure_mlserver_venv, stop_and_wrap_up, record_failure, Platform,
                    deploy, free_port, kill_if_alive, log, machine, median, register_wine_models,
                    replica_rows, require_wrk, router_state, router_stats, run_wrk,
                    stop_on_sigterm, v2_body, wait_deployment, wine_rows, wrk_script)

from fermi_extension.serving.replica_key import replica_key

MODEL = "wine-bench"
ROUNDS = 3
SECONDS = 10
WARMUP_SECONDS = 3
RATIO_GOAL = 3.0
ROUTER_CPU_GOAL = 0.25  # router CPU per request / replica CPU per request
ADDED_P50_GOAL_MS = 0.1
# MLServer's adaptive batching, as its documentation advises for throughput
MLSERVER_BATCHING = {"max_batch_size": 8, "max_batch_time": 0.002}
WINE_COLUMNS = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
                "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
                "od280/od315_of_diluted_wines", "proline"]


# -- MLServer --------------------------------------------------------------------------------------

def prepare_mlserver(venv: Path, model_dir: Path, where: Path) -> None:
    """An MLServer repository of two models over the same MLflow model version, batching on."""
    where.mkdir(parents=True)
    sk = where / MODEL
    sk.mkdir()
    # the pipeline the job logged (skops), re-saved for the sklearn runtime (joblib)
    convert = ("import sys, joblib, skops.io as sio; p = sys.argv[1];"
               "joblib.dump(sio.load(p, trusted=sio.get_untrusted_types(file=p)), sys.argv[2])")
    subprocess.run([str(venv / "bin" / "python"), "-c", convert, str(model_dir / "model.skops"),
                    str(sk / "model.joblib")], check=True, timeout=120)
    (sk / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel", **MLSERVER_BATCHING,
        "parameters": {"uri": "./model.joblib", "version": "1"}}))
    mf = where / f"{MODEL}-mlflow"
    mf.mkdir()
    (mf / "model-settings.json").write_text(json.dumps({
        "name": f"{MODEL}-mlflow", "implementation": "mlserver_mlflow.MLflowRuntime",
        **MLSERVER_BATCHING, "parameters": {"uri": str(model_dir), "version": "1"}}))


def mlserver_settings(where: Path, parallel_workers: int) -> dict:
    """Write settings.json for one run (fresh ports); returns it."""
    settings = {"parallel_workers": parallel_workers, "host": "127.0.0.1", "debug": False,
                "http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    (where / "settings.json").write_text(json.dumps(settings))
    return settings


def start_mlserver(venv: Path, where: Path, port: int, log_path: Path,
                   timeout: float = 180) -> tuple[subprocess.Popen, float]:
    t0 = time.monotonic()
    process = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(where)],
                               stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    while time.monotonic() - t0 < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"MLServer exited ({process.returncode}):\n"
                               + log_path.read_text(errors="replace")[-3000:])
        try:
            if all(httpx.get(f"{base}/v2/models/{name}/ready", timeout=2).status_code == 200
                   for name in (MODEL, f"{MODEL}-mlflow")):
                return process, time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    kill_if_alive(process)
    raise RuntimeError(f"MLServer not ready in {timeout} s:\n" + log_path.read_text(errors="replace")[-3000:])


# -- measuring -------------------------------------------------------------------------------------

def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for role, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[role] = t.user + t.system
        except psutil.Error:
            out[role] = float("nan")
    return out


def measured_wrk(target: dict, pids: dict[str, int], **kwargs) -> dict:
    """run_wrk with the CPU seconds each process (and wrk) used during the run."""
    before = cpu_seconds(pids)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run_wrk(target["url"], target["script"], **kwargs)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = cpu_seconds(pids)
    cpu = {role: round(after[role] - before[role], 2) for role in pids}
    cpu["wrk"] = round((after_children.ru_utime + after_children.ru_stime)
                       - (children.ru_utime + children.ru_stime), 2)
    result["cpu_seconds"] = cpu
    result["cpu_us_per_request"] = {role: round(v / result["requests"] * 1e6, 1)
                                    for role, v in cpu.items() if result["requests"]}
    result["loadavg_after"] = os.getloadavg()
    if not (result.get("non_2xx") or result.get("socket_errors")):
        result.pop("raw", None)  # kept only when something went wrong
    else:
        log(f"  WARNING {target['label']}: {result['non_2xx']} non-2xx, "
            f"{result['socket_errors']} socket errors")
    return result


def brief(r: dict) -> str:
    text = f"{r['requests_per_s']:8.1f} req/s  mean {r['latency_mean_ms']:.2f} ms"
    if "p50_ms" in r:
        text += f"  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.2f} ms"
    cpu = r.get("cpu_us_per_request", {})
    return text + "  CPU µs/req " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--mlserver-venv", type=Path, default=MLSERVER_VENV)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of each measurement")
    parser.add_argument("--seconds", type=int, default=SECONDS, help="seconds of each wrk run")
    parser.add_argument("--parallel-workers", default="0,1",
                        help="MLServer parallel_workers settings to try; its best counts (default 0,1)")
    args = parser.parse_args()
    stop_on_sigterm()
    require_wrk()
    rounds, seconds = args.rounds, args.seconds
    workers = [int(w) for w in args.parallel_workers.split(",")]

    info = machine()
    log(f"machine: {info}")
    result: dict = {"benchmark": "P3", "machine": info, "rounds": rounds, "seconds": seconds,
                    "mlserver_batching": MLSERVER_BATCHING, "mlserver_parallel_workers": workers}
    tmp = Path(tempfile.mkdtemp(prefix="fermi-p3-"))
    platform = Platform(tmp / "data")
    mlserver: subprocess.Popen | None = None
    ok = False
    try:
        result["mlserver_venv"] = ensure_mlserver_venv(args.mlserver_venv)

        platform.start()
        log(f"platform up in {platform.start_seconds:.1f} s on port {platform.port}, "
            f"router on {platform.serving_port}")
        token = platform.create_user("modeller")
        t0 = time.monotonic()
        jobs = register_wine_models(platform, token, MODEL, (1.0,))
        log(f"{MODEL} version 1 registered by job {jobs[0]['id']} in {time.monotonic() - t0:.1f} s")
        with platform.client(token) as api:
            t0 = time.monotonic()
            created = deploy(api, name="wine", model=MODEL, version="1", min_replicas=1,
                             max_replicas=1, target_concurrency=2, scale_down_delay_seconds=10)
            d, _ = wait_deployment(api, "wine", lambda d: d["status"] == "ready", 180, what="ready")
            result["deploy_to_ready_s"] = round(time.monotonic() - t0, 2)
        log(f"deployment ready in {result['deploy_to_ready_s']} s at {created['url']}")
        rows = [r for r in replica_rows(platform.db_path) if r["state"] == "ready"]
        replica = rows[0]
        router_pid = router_state(platform.data)["pid"]
        repository = tmp / "mlserver"
        prepare_mlserver(args.mlserver_venv, platform.data / "serving" / "models" / MODEL / "1",
                         repository)

        row = wine_rows(1)
        body = v2_body(row)
        columns = {"inputs": [{"name": c, "shape": [1, 1], "datatype": "FP64", "data": [v]}
                              for c, v in zip(WINE_COLUMNS, row[0])]}
        auth = {"Authorization": f"Bearer {created['api_key']}"}
        # a replica answers only the router: the direct baseline shows the key the router sends
        master = (platform.data / "serving" / "admin-token").read_text().strip()
        replica_auth = {"Authorization": f"Bearer {replica_key(master, replica['url'])}"}
        targets = {
            "fermi": {"label": "Fermi (router -> 1 replica)",
                      "url": f"{created['url']}/v2/models/{MODEL}/infer",
                      "script": wrk_script(tmp / "fermi.lua", body, auth), "payload": body,
                      "headers": auth},
            "replica": {"label": "Fermi replica directly (no router)",
                        "url": f"{replica['url']}/v2/models/{MODEL}/infer",
                        "script": wrk_script(tmp / "replica.lua", body, replica_auth),
                        "payload": body, "headers": replica_auth},
        }

        def mlserver_targets(port: int, pw: int) -> dict:
            mls = f"http://127.0.0.1:{port}"
            return {
                "mlserver": {"label": f"MLServer sklearn runtime, batching, pw={pw}",
                             "url": f"{mls}/v2/models/{MODEL}/infer",
                             "script": wrk_script(tmp / "mlserver.lua", body, {}), "payload": body,
                             "headers": {}},
                "mlserver_mlflow": {"label": f"MLServer MLflow runtime (13 columns), pw={pw}",
                                    "url": f"{mls}/v2/models/{MODEL}-mlflow/infer",
                                    "script": wrk_script(tmp / "mlserver-mlflow.lua", columns, {}),
                                    "payload": columns, "headers": {}},
            }

        def check(named: dict) -> None:
            """Every target answers 200 with a prediction before anything is timed."""
            for target in named.values():
                answer = httpx.post(target["url"], json=target["payload"], headers=target["headers"],
                                    timeout=30)
                if answer.status_code != 200:
                    raise RuntimeError(f"{target['label']}: {answer.status_code} {answer.text[:500]}")
                target["sample_answer"] = answer.json()

        check(targets)
        result["payload"] = body
        pids = {"router": router_pid, "replica": replica["pid"]}
        result["pids"] = pids
        throughput: dict = {"fermi": [], "mlserver": {}, "mlserver_mlflow": {}}
        latency: dict = {"fermi": [], "replica": [], "mlserver": []}
        result["mlserver"] = {}
        for n, pw in enumerate(workers):
            settings = mlserver_settings(repository, pw)
            mlserver, mls_start = start_mlserver(args.mlserver_venv, repository, settings["http_port"],
                                                 tmp / f"mlserver-pw{pw}.log")
            log(f"MLServer (pid {mlserver.pid}, parallel_workers={pw}, batching "
                f"{MLSERVER_BATCHING}) ready in {mls_start:.1f} s on {settings['http_port']}")
            result["mlserver"][f"pw{pw}"] = {"start_to_ready_s": round(mls_start, 1),
                                             "settings": settings}
            named = {**targets, **mlserver_targets(settings["http_port"], pw)}
            check({k: v for k, v in named.items() if k.startswith("mlserver")})
            measured = {**pids, "mlserver": mlserver.pid}
            log(f"warm-up: {WARMUP_SECONDS} s of wrk -c8 on each target")
            for name in ("fermi", "mlserver", "mlserver_mlflow"):
                run_wrk(named[name]["url"], named[name]["script"], connections=8, seconds=WARMUP_SECONDS)
            for key in ("mlserver", "mlserver_mlflow"):
                throughput[key][f"pw{pw}"] = []
            orders = [["fermi", "mlserver", "mlserver_mlflow"], ["mlserver", "mlserver_mlflow", "fermi"],
                      ["mlserver_mlflow", "fermi", "mlserver"]]
            log(f"throughput: wrk -t1 -c8 -d{seconds}s, {rounds} rounds, order rotating")
            for i in range(rounds):
                for name in orders[i % len(orders)]:
                    r = measured_wrk(named[name], measured, connections=8, seconds=seconds)
                    r["round"] = i + 1
                    r["mlserver_parallel_workers"] = pw
                    (throughput["fermi"] if name == "fermi" else throughput[name][f"pw{pw}"]).append(r)
                    log(f"  round {i + 1} {named[name]['label']:45s} {brief(r)}")
            if n == len(workers) - 1:  # latency once, with the last MLServer for information
                orders = [["fermi", "replica", "mlserver"], ["replica", "mlserver", "fermi"],
                          ["mlserver", "fermi", "replica"]]
                log(f"latency: wrk -t1 -c1 -d{seconds}s --latency, {rounds} rounds, order rotating")
                for i in range(rounds):
                    for name in orders[i % len(orders)]:
                        r = measured_wrk(named[name], measured, connections=1, seconds=seconds,
                                         latency=True)
                        r["round"] = i + 1
                        latency[name].append(r)
                        log(f"  round {i + 1} {named[name]['label']:45s} {brief(r)}")
            hard = kill_if_alive(mlserver)
            mlserver = None
            log(f"MLServer pw={pw} stopped{' (had to be killed)' if hard else ''}")
        result["targets"] = {k: {"label": v["label"], "url": v["url"],
                                 "sample_answer": v["sample_answer"]} for k, v in targets.items()}

        stats = router_stats(platform.data)["deployments"]["wine"]
        result["router_stats_at_end"] = stats
        result["throughput"] = throughput
        result["latency"] = latency

        fermi_rps = median([r["requests_per_s"] for r in throughput["fermi"]])
        mls_rps = {k: {pw: median([r["requests_per_s"] for r in runs]) for pw, runs in v.items()}
                   for k, v in throughput.items() if k != "fermi"}
        best_pw = max(mls_rps["mlserver"], key=mls_rps["mlserver"].get)
        best = mls_rps["mlserver"][best_pw]
        ratio = fermi_rps / best
        router_share = median([r["cpu_us_per_request"]["router"] / r["cpu_us_per_request"]["replica"]
                               for r in throughput["fermi"] if r["cpu_us_per_request"].get("replica")])
        p50 = {k: median([r["p50_ms"] for r in v]) for k, v in latency.items()}
        added = p50["fermi"] - p50["replica"]
        per_round_added = [round(a["p50_ms"] - b["p50_ms"], 3)
                           for a, b in zip(latency["fermi"], latency["replica"])]
        everything = [*throughput["fermi"], *latency["fermi"], *latency["replica"], *latency["mlserver"],
                      *(r for v in throughput.values() if isinstance(v, dict)
                        for runs in v.values() for r in runs)]
        errors = sum(r["non_2xx"] + r["socket_errors"] for r in everything)
        result["summary"] = {
            "median_rps": {"fermi": round(fermi_rps, 1),
                           **{f"{k}_{pw}": round(v, 1) for k, d in mls_rps.items() for pw, v in d.items()}},
            "mlserver_best": {"parallel_workers": best_pw, "rps": round(best, 1)},
            "ratio_fermi_vs_mlserver_tuned": round(ratio, 3),
            "ratio_goal": f">= {RATIO_GOAL}",
            "ratio_pass": ratio >= RATIO_GOAL,
            "router_cpu_per_request_us": median([r["cpu_us_per_request"]["router"] for r in throughput["fermi"]]),
            "replica_cpu_per_request_us": median([r["cpu_us_per_request"]["replica"] for r in throughput["fermi"]]),
            "router_cpu_share": round(router_share, 3),
            "router_cpu_goal": f"<= {ROUTER_CPU_GOAL}",
            "router_cpu_pass": router_share <= ROUTER_CPU_GOAL,
            "median_p50_ms": {k: round(v, 3) for k, v in p50.items()},
            "router_added_p50_ms": round(added, 3),
            "router_added_p50_per_round_ms": per_round_added,
            "added_goal": f"<= {ADDED_P50_GOAL_MS} ms",
            "added_pass": added <= ADDED_P50_GOAL_MS,
            "non_2xx_or_socket_errors": errors,
        }
        result["loadavg_at_end"] = os.getloadavg()
        s = result["summary"]
        ok = s["ratio_pass"] and s["router_cpu_pass"] and s["added_pass"] and errors == 0
        print()
        print(f"P3 throughput (median of {rounds}, wrk -t1 -c8 -d{seconds}s): Fermi {fermi_rps:.1f} req/s, "
              f"MLServer sklearn runtime with batching, best of parallel_workers {workers} "
              f"(pw={best_pw[2:]}) {best:.1f} req/s -> ratio {ratio:.3f} "
              f"(goal >= {RATIO_GOAL}: {'PASS' if s['ratio_pass'] else 'FAIL'}); all MLServer medians "
              f"{ {k: v for k, v in s['median_rps'].items() if k != 'fermi'} }")
        print(f"P3 router CPU per request {s['router_cpu_per_request_us']:.1f} µs vs replica "
              f"{s['replica_cpu_per_request_us']:.1f} µs = {router_share:.1%} "
              f"(goal <= {ROUTER_CPU_GOAL:.0%}: {'PASS' if s['router_cpu_pass'] else 'FAIL'})")
        print(f"P3 router added p50 (wrk -c1): router {p50['fermi']:.3f} ms - replica direct "
              f"{p50['replica']:.3f} ms = {added:.3f} ms (per round {per_round_added}) "
              f"(goal <= {ADDED_P50_GOAL_MS} ms: {'PASS' if s['added_pass'] else 'FAIL'}); "
              f"MLServer -c1 p50 {p50['mlserver']:.3f} ms")
        print(f"P3 non-2xx answers or socket errors over all runs: {errors}")
    except Exception as error:
        record_failure(result, platform, error)
    finally:
        if mlserver is not None:
            hard = kill_if_alive(mlserver)
            result["mlserver_killed_hard"] = hard
            log(f"MLServer stopped{' (had to be killed)' if hard else ''}")
        stop_and_wrap_up(args, result, tmp, platform)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
