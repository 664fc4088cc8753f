"""P1: job turnaround — wall time from POST /jobs to `succeeded` for a 2-cell notebook, against
two baselines on the same notebook, interleaved in one run:

- the bare papermill CLI (a fresh process per run: imports, kernel, notebook);
- a WARM papermill, what a skilled user would pick: one Python process that has already
  imported papermill and calls ``papermill.execute_notebook`` per run (kernel start and notebook
  remain, ~1 s, FACTS.md).

    .venv/bin/python benchmarks/p1_turnaround.py [--runs 7] [--json out.json] [--containers]

Goals (issue 14): with jobs as host processes (P1), median(platform) / median(warm papermill)
<= 0.5, and / median(papermill CLI) <= 0.5. With ``--containers`` (P1c: `fermi up` with podman,
each job in its own container from the pinned image, a warm container pool), median(platform) /
median(warm papermill on the host) <= 1.0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import stop_and_wrap_up, record_failure, API, ENDED, Platform, log, machine, make_notebook, median

POLL = 0.020
GOAL = 0.5  # against the CLI
GOAL_WARM = 0.5  # against the warm papermill, jobs as processes
GOAL_WARM_CONTAINERS = 1.0  # against the warm papermill on the host, jobs in containers

# the warm baseline's process: papermill imported once, then one execution per line on stdin
WARM_PAPERMILL = """
import sys, time
sys.modules.setdefault("rfc3987_syntax", None)  # what the platform's processes skip, too
import papermill
print("ready", flush=True)
for line in sys.stdin:
    source, out = line.split()
    t0 = time.perf_counter()
    papermill.execute_notebook(source, out, parameters={"x": 2}, progress_bar=False)
    print(time.perf_counter() - t0, flush=True)
"""


def utc_epoch(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()


def run_platform_job(platform: Platform, client, notebook: dict, timeout: float = 120) -> dict:
    t_post = time.time()
    t0 = time.perf_counter()
    response = client.post(f"{API}/jobs", json={"notebook": notebook, "parameters": {"x": 2}})
    t_accepted = time.perf_counter()
    if response.status_code != 201:
        raise RuntimeError(f"POST /jobs: {response.status_code} {response.text[:300]}")
    job_id = response.json()["id"]
    deadline = t0 + timeout
    polls = 0
    while True:
        job = client.get(f"{API}/jobs/{job_id}").json()
        polls += 1
        if job["status"] in ENDED:
            break
        if time.perf_counter() > deadline:
            raise RuntimeError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(POLL)
    wall = time.perf_counter() - t0
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('reason')}")
    # where the time went (client clock and DB clock are the same machine's)
    files = platform.data / "jobs" / job_id
    started_event = next((e for e in job["events"] if e["kind"] == "started"), None)
    marks = {
        "created_at": utc_epoch(job["created_at"]),
        "started_at": utc_epoch(job["started_at"]),
        "started_event": utc_epoch(started_event["at"]) if started_event else None,
        "process_start": (files / "process.json").stat().st_mtime if (files / "process.json").exists() else None,
        "process_result": (files / "result.json").stat().st_mtime if (files / "result.json").exists() else None,
        "finished_at": utc_epoch(job["finished_at"]),
    }
    seen = t_post + wall
    phases = {}
    order = ["created_at", "started_at", "started_event", "process_start", "process_result",
             "finished_at"]
    prev_name, prev = "post", t_post
    for name in order:
        if marks[name] is not None:
            phases[f"{prev_name}->{name}"] = round(marks[name] - prev, 3)
            prev_name, prev = name, marks[name]
    phases[f"{prev_name}->seen_by_client"] = round(seen - prev, 3)
    return {"id": job_id, "wall": wall, "post_latency": t_accepted - t0, "polls": polls,
            "phases": phases}


def run_papermill(workdir: Path, notebook_path: Path) -> float:
    papermill = str(Path(sys.executable).parent / "papermill")
    out = workdir / "out.ipynb"
    t0 = time.perf_counter()
    result = subprocess.run([papermill, str(notebook_path), str(out), "-p", "x", "2"],
                            cwd=workdir, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"papermill failed ({result.returncode}): {result.stderr[-1000:]}")
    return wall


class WarmPapermill:
    """The warm baseline: a process that has imported papermill, asked to run the notebook."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.process = subprocess.Popen([sys.executable, "-c", WARM_PAPERMILL], cwd=workdir,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the warm papermill process did not start")

    def run(self, notebook_path: Path) -> float:
        """Wall time seen by its caller: request written → answer read."""
        t0 = time.perf_counter()
        self.process.stdin.write(f"{notebook_path} {self.workdir / 'warm-out.ipynb'}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        wall = time.perf_counter() - t0
        if not answer.strip():
            raise RuntimeError("the warm papermill process died")
        return wall

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir")
    parser.add_argument("--containers", action="store_true",
                        help="P1c: jobs in containers (needs podman; the first start builds "
                             "the official image)")
    args = parser.parse_args()
    goal_warm = GOAL_WARM_CONTAINERS if args.containers else GOAL_WARM
    name = "P1c" if args.containers else "P1"

    info = machine()
    log(f"machine: {info}")
    tmp = Path(tempfile.mkdtemp(prefix="fermi-p1-"))
    notebook = make_notebook("y = x * 2", parameters="x = 1")
    nb_path = tmp / "in.ipynb"
    nb_path.write_text(json.dumps(notebook))
    platform = Platform(tmp / "data", containers=args.containers)
    result: dict = {"benchmark": name, "machine": info, "runs": args.runs, "poll_s": POLL,
                    "isolation": "containers" if args.containers else "processes"}
    warm = None
    try:
        warm = WarmPapermill(tmp)
        platform.start(timeout=900 if args.containers else 240)
        log(f"platform up in {platform.start_seconds:.1f} s on port {platform.port} ({platform.data})")
        token = platform.create_user("p1user")
        with platform.client(token) as client:
            log("warm-up: one platform job, one papermill CLI and one warm papermill run "
                "(not counted)")
            warm_job = run_platform_job(platform, client, notebook)
            warm_pm = run_papermill(tmp, nb_path)
            warm_warm = warm.run(nb_path)
            log(f"  warm-up platform {warm_job['wall']:.3f} s {warm_job['phases']}, "
                f"papermill {warm_pm:.3f} s, warm papermill {warm_warm:.3f} s")
            fermi_runs, pm_runs, warm_runs = [], [], []
            orders = [("fermi", "papermill", "warm"), ("warm", "fermi", "papermill"),
                      ("papermill", "warm", "fermi")]
            for i in range(args.runs):
                # rotate which goes first so none always follows another
                for which in orders[i % len(orders)]:
                    if which == "fermi":
                        run = run_platform_job(platform, client, notebook)
                        fermi_runs.append(run)
                        log(f"  run {i + 1} platform       {run['wall']:.3f} s  {run['phases']}")
                    elif which == "papermill":
                        wall = run_papermill(tmp, nb_path)
                        pm_runs.append(wall)
                        log(f"  run {i + 1} papermill CLI  {wall:.3f} s")
                    else:
                        wall = warm.run(nb_path)
                        warm_runs.append(wall)
                        log(f"  run {i + 1} warm papermill {wall:.3f} s")
        fermi_median = median([r["wall"] for r in fermi_runs])
        pm_median = median(pm_runs)
        warm_median = median(warm_runs)
        ratio = fermi_median / pm_median
        ratio_warm = fermi_median / warm_median
        phase_names = list(fermi_runs[0]["phases"])
        phase_medians = {
            name: round(median([r["phases"].get(name, 0.0) for r in fermi_runs]), 3)
            for name in phase_names
        }
        result.update({
            "platform_seconds": [round(r["wall"], 3) for r in fermi_runs],
            "papermill_seconds": [round(w, 3) for w in pm_runs],
            "platform_median_s": round(fermi_median, 3),
            "papermill_median_s": round(pm_median, 3),
            "warm_papermill_seconds": [round(w, 3) for w in warm_runs],
            "warm_papermill_median_s": round(warm_median, 3),
            "ratio": round(ratio, 3),
            "ratio_warm": round(ratio_warm, 3),
            "goal": (f"ratio_warm <= {goal_warm}" if args.containers else
                     f"ratio_warm <= {goal_warm} and ratio <= {GOAL}"),
            "pass": ratio_warm <= goal_warm and (args.containers or ratio <= GOAL),
            "platform_phase_medians_s": phase_medians,
            "post_latency_median_ms": round(median([r["post_latency"] for r in fermi_runs]) * 1000, 1),
            "warmup": {"platform_s": round(warm_job["wall"], 3), "papermill_s": round(warm_pm, 3),
                       "warm_papermill_s": round(warm_warm, 3),
                       "platform_phases_s": warm_job["phases"]},
            "platform_start_s": round(platform.start_seconds, 1),
            "loadavg_at_end": os.getloadavg(),
        })
        print()
        print(f"{name} platform POST->succeeded median: {fermi_median:.3f} s  (runs: {result['platform_seconds']})")
        print(f"{name} papermill CLI median:            {pm_median:.3f} s  (runs: {result['papermill_seconds']})")
        print(f"{name} warm papermill median:           {warm_median:.3f} s  (runs: {result['warm_papermill_seconds']})")
        print(f"{name} ratio vs warm papermill: {ratio_warm:.3f}  goal <= {goal_warm}: "
              f"{'PASS' if ratio_warm <= goal_warm else 'FAIL'}")
        if args.containers:
            print(f"{name} ratio vs papermill CLI:  {ratio:.3f}  (no goal)")
        else:
            print(f"{name} ratio vs papermill CLI:  {ratio:.3f}  goal <= {GOAL}: "
                  f"{'PASS' if ratio <= GOAL else 'FAIL'}")
        print(f"{name} platform phase medians (s): {phase_medians}")
    except Exception as error:
        record_failure(result, platform, error)
    finally:
        if warm is not None:
            warm.close()
        stop_and_wrap_up(args, result, tmp, platform)
    return 0 if result.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
