"""P3: inference throughput at a deployment's URL against MLServer serving the same model alone,
and the p50 latency the router adds.

1. Starts a platform (with `--serving-port`), registers `wine-bench` version 1 by running the
   tabular-classifier template as a job, and deploys it with exactly one replica (min = max = 1).
2. Starts MLServer 1.7 from its own venv (/tmp/mlserver-venv, created on first use with
   `uvloop<0.22`, see FACTS.md) with `parallel_workers=0` (its fastest), serving the same model
   version twice:
   - `wine-bench` with the sklearn runtime (`mlserver_sklearn.SKLearnModel`), loading the very
     pipeline the job logged (model.skops, re-saved as model.joblib with the same scikit-learn
     version). It takes the same payload as Fermi: one FP64 tensor `input-0` of shape [1, 13].
     This is the baseline of the goal.
   - `wine-bench-mlflow` with the MLflow runtime (`mlserver_mlflow.MLflowRuntime`) on the
     model's MLflow directory. It rejects the `input-0` tensor (500: "Model is missing inputs
     ['alcohol', ...]", the signature is column-based), so it gets the same row as 13 tensors of
     shape [1, 1], one per column. Shown for information only.
3. `wrk -t1 -c8 -d10s` with a one-row V2 infer: 3 rounds of each target, interleaved (the order
   rotates every round), after a 3 s warm-up of each.
4. Router's added latency: `wrk -t1 -c1 -d10s --latency` at the deployment URL and directly at
   the replica's own URL (from the control plane's `replicas` table), 3 rounds interleaved.
   Also MLServer (sklearn runtime) at -c1 for information.

CPU seconds used by the router, the replica, MLServer and wrk itself during each run are kept
(psutil / RUSAGE_CHILDREN), to see where the time goes.

    .venv/bin/python benchmarks/p3_throughput.py [--json out.json] [--keep] [--mlserver-venv DIR]

Goals: Fermi req/s (median of 3) / MLServer sklearn-runtime req/s (median of 3) >= 1.0;
router p50 (median of 3) - replica-direct p50 (median of 3) <= 1 ms.
Needs `wrk` on PATH (exit 2 when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from common import (stop_and_wrap_up, record_failure, Platform, deploy, free_port, kill_if_alive, log, machine, median,
                    register_wine_models, replica_rows, require_wrk, router_state, router_stats,
                    run_wrk, stop_on_sigterm, v2_body, wait_deployment, wine_rows,
                    wrk_script)

from fermi_extension.serving.replica_key import replica_key

MODEL = "wine-bench"
ROUNDS = 3
SECONDS = 10
WARMUP_SECONDS = 3
RATIO_GOAL = 1.0
ADDED_P50_GOAL_MS = 1.0
MLSERVER_PACKAGES = ["mlserver", "mlserver-mlflow", "mlserver-sklearn", "uvloop<0.22"]
WINE_COLUMNS = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
                "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
                "od280/od315_of_diluted_wines", "proline"]


# -- MLServer --------------------------------------------------------------------------------------

def ensure_mlserver_venv(venv: Path) -> dict:
    """Reuse ``venv`` when it has MLServer with its two runtimes and uvloop < 0.22; otherwise
    (re)create it with the platform's scikit-learn and skops versions pinned."""
    python = venv / "bin" / "python"
    check = ("import mlserver, mlserver_sklearn, mlserver_mlflow, sklearn, skops, uvloop, json;"
             "print(json.dumps({'mlserver': mlserver.__version__, 'sklearn': sklearn.__version__,"
             "'skops': skops.__version__, 'uvloop': uvloop.__version__}))")

    def versions() -> dict | None:
        if not python.exists():
            return None
        done = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return None
        found = json.loads(done.stdout.strip().splitlines()[-1])
        if tuple(int(x) for x in found["uvloop"].split(".")[:2]) >= (0, 22):
            return None
        return found

    import sklearn
    import skops

    found = versions()
    if found and found["sklearn"] == sklearn.__version__:
        return {"venv": str(venv), "created": False, "versions": found}
    log(f"creating the MLServer venv {venv} (first use; pip install {' '.join(MLSERVER_PACKAGES)} "
        f"scikit-learn=={sklearn.__version__} skops=={skops.__version__}); this takes minutes")
    t0 = time.monotonic()
    if venv.exists():
        shutil.rmtree(venv)
    base = getattr(sys, "_base_executable", None) or shutil.which("python3")
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
         *MLSERVER_PACKAGES, f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}"],
        capture_output=True, text=True, timeout=1500)
    if done.returncode != 0:
        raise RuntimeError(f"pip install into {venv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    seconds = time.monotonic() - t0
    found = versions()
    if not found:
        raise RuntimeError(f"{venv} was installed but MLServer does not import")
    size = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True).stdout.split()[0]
    log(f"MLServer venv created in {seconds:.0f} s ({size} MB): {found}")
    return {"venv": str(venv), "created": True, "install_seconds": round(seconds, 1),
            "size_mb": int(size), "versions": found}


def prepare_mlserver(venv: Path, model_dir: Path, where: Path) -> dict:
    """An MLServer repository of two models over the same MLflow model version; returns ports."""
    where.mkdir(parents=True)
    sk = where / MODEL
    sk.mkdir()
    # the pipeline the job logged (skops), re-saved for the sklearn runtime (joblib)
    convert = ("import sys, joblib, skops.io as sio; p = sys.argv[1];"
               "joblib.dump(sio.load(p, trusted=sio.get_untrusted_types(file=p)), sys.argv[2])")
    subprocess.run([str(venv / "bin" / "python"), "-c", convert, str(model_dir / "model.skops"),
                    str(sk / "model.joblib")], check=True, timeout=120)
    (sk / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"}}))
    mf = where / f"{MODEL}-mlflow"
    mf.mkdir()
    (mf / "model-settings.json").write_text(json.dumps({
        "name": f"{MODEL}-mlflow", "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(model_dir), "version": "1"}}))
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    (where / "settings.json").write_text(json.dumps({
        "parallel_workers": 0, "host": "127.0.0.1", "debug": False, **ports}))
    return ports


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
    parser.add_argument("--mlserver-venv", type=Path, default=Path("/tmp/mlserver-venv"))
    args = parser.parse_args()
    stop_on_sigterm()
    require_wrk()

    info = machine()
    log(f"machine: {info}")
    result: dict = {"benchmark": "P3", "machine": info, "rounds": ROUNDS, "seconds": SECONDS}
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

        ports = prepare_mlserver(args.mlserver_venv, platform.data / "serving" / "models" / MODEL / "1",
                                 tmp / "mlserver")
        mlserver, mls_start = start_mlserver(args.mlserver_venv, tmp / "mlserver", ports["http_port"],
                                             tmp / "mlserver.log")
        log(f"MLServer (pid {mlserver.pid}, parallel_workers=0) ready in {mls_start:.1f} s on "
            f"{ports['http_port']}")
        result["mlserver"] = {"pid": mlserver.pid, "start_to_ready_s": round(mls_start, 1),
                              "settings": json.loads((tmp / "mlserver" / "settings.json").read_text())}

        row = wine_rows(1)
        body = v2_body(row)
        columns = {"inputs": [{"name": c, "shape": [1, 1], "datatype": "FP64", "data": [v]}
                              for c, v in zip(WINE_COLUMNS, row[0])]}
        auth = {"Authorization": f"Bearer {created['api_key']}"}
        # a replica answers only the router: the direct baseline shows the key the router sends
        master = (platform.data / "serving" / "admin-token").read_text().strip()
        replica_auth = {"Authorization": f"Bearer {replica_key(master, replica['url'])}"}
        mls = f"http://127.0.0.1:{ports['http_port']}"
        targets = {
            "fermi": {"label": "Fermi (router -> 1 replica)",
                      "url": f"{created['url']}/v2/models/{MODEL}/infer",
                      "script": wrk_script(tmp / "fermi.lua", body, auth)},
            "replica": {"label": "Fermi replica directly (no router)",
                        "url": f"{replica['url']}/v2/models/{MODEL}/infer",
                        "script": wrk_script(tmp / "replica.lua", body, replica_auth)},
            "mlserver": {"label": "MLServer, sklearn runtime",
                         "url": f"{mls}/v2/models/{MODEL}/infer",
                         "script": wrk_script(tmp / "mlserver.lua", body, {})},
            "mlserver_mlflow": {"label": "MLServer, MLflow runtime (13 column tensors)",
                                "url": f"{mls}/v2/models/{MODEL}-mlflow/infer",
                                "script": wrk_script(tmp / "mlserver-mlflow.lua", columns, {})},
        }
        # every target answers 200 with a prediction before anything is timed
        for name, target in targets.items():
            payload = columns if name == "mlserver_mlflow" else body
            headers = auth if name == "fermi" else {}
            answer = httpx.post(target["url"], json=payload, headers=headers, timeout=30)
            if answer.status_code != 200:
                raise RuntimeError(f"{target['label']}: {answer.status_code} {answer.text[:500]}")
            target["sample_answer"] = answer.json()
        result["targets"] = {k: {"label": v["label"], "url": v["url"],
                                 "sample_answer": v["sample_answer"]} for k, v in targets.items()}
        result["payload"] = body
        pids = {"router": router_pid, "replica": replica["pid"], "mlserver": mlserver.pid}
        result["pids"] = pids

        log(f"warm-up: {WARMUP_SECONDS} s of wrk -c8 on each target")
        for target in targets.values():
            run_wrk(target["url"], target["script"], connections=8, seconds=WARMUP_SECONDS)

        throughput = {k: [] for k in ("fermi", "mlserver", "mlserver_mlflow")}
        orders = [["fermi", "mlserver", "mlserver_mlflow"], ["mlserver", "mlserver_mlflow", "fermi"],
                  ["mlserver_mlflow", "fermi", "mlserver"]]
        log(f"throughput: wrk -t1 -c8 -d{SECONDS}s, {ROUNDS} rounds, order rotating")
        for i in range(ROUNDS):
            for name in orders[i % len(orders)]:
                r = measured_wrk(targets[name], pids, connections=8, seconds=SECONDS)
                r["round"] = i + 1
                throughput[name].append(r)
                log(f"  round {i + 1} {targets[name]['label']:45s} {brief(r)}")

        latency = {k: [] for k in ("fermi", "replica", "mlserver")}
        orders = [["fermi", "replica", "mlserver"], ["replica", "mlserver", "fermi"],
                  ["mlserver", "fermi", "replica"]]
        log(f"latency: wrk -t1 -c1 -d{SECONDS}s --latency, {ROUNDS} rounds, order rotating")
        for i in range(ROUNDS):
            for name in orders[i % len(orders)]:
                r = measured_wrk(targets[name], pids, connections=1, seconds=SECONDS, latency=True)
                r["round"] = i + 1
                latency[name].append(r)
                log(f"  round {i + 1} {targets[name]['label']:45s} {brief(r)}")

        stats = router_stats(platform.data)["deployments"]["wine"]
        result["router_stats_at_end"] = stats
        result["throughput"] = throughput
        result["latency"] = latency

        rps = {k: median([r["requests_per_s"] for r in v]) for k, v in throughput.items()}
        ratio = rps["fermi"] / rps["mlserver"]
        p50 = {k: median([r["p50_ms"] for r in v]) for k, v in latency.items()}
        added = p50["fermi"] - p50["replica"]
        per_round_added = [round(a["p50_ms"] - b["p50_ms"], 3)
                           for a, b in zip(latency["fermi"], latency["replica"])]
        errors = sum(r["non_2xx"] + r["socket_errors"] for v in (*throughput.values(), *latency.values())
                     for r in v)
        result["summary"] = {
            "median_rps": {k: round(v, 1) for k, v in rps.items()},
            "ratio_fermi_vs_mlserver_sklearn": round(ratio, 3),
            "ratio_fermi_vs_mlserver_mlflow": round(rps["fermi"] / rps["mlserver_mlflow"], 3),
            "ratio_goal": f">= {RATIO_GOAL}",
            "ratio_pass": ratio >= RATIO_GOAL,
            "median_p50_ms": {k: round(v, 3) for k, v in p50.items()},
            "router_added_p50_ms": round(added, 3),
            "router_added_p50_per_round_ms": per_round_added,
            "added_goal": f"<= {ADDED_P50_GOAL_MS} ms",
            "added_pass": added <= ADDED_P50_GOAL_MS,
            "non_2xx_or_socket_errors": errors,
        }
        result["loadavg_at_end"] = os.getloadavg()
        ok = result["summary"]["ratio_pass"] and result["summary"]["added_pass"] and errors == 0
        s = result["summary"]
        print()
        print(f"P3 throughput (median of {ROUNDS}, wrk -t1 -c8 -d{SECONDS}s): Fermi {rps['fermi']:.1f} req/s, "
              f"MLServer sklearn runtime {rps['mlserver']:.1f} req/s -> ratio {ratio:.3f} "
              f"(goal >= {RATIO_GOAL}: {'PASS' if s['ratio_pass'] else 'FAIL'}); "
              f"MLServer MLflow runtime {rps['mlserver_mlflow']:.1f} req/s")
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
