"""Run every benchmark figure (`make bench`), even after one falls short, and record the run.

Each script runs under its time limit with ``--json benchmarks/results/NAME.json``; its output
goes to the terminal and to ``benchmarks/results/NAME.log``. Then the block between the
``make bench`` markers at the top of ``benchmarks/RESULTS.md`` is rewritten: for each figure its
result, the commit, the machine (cores, CPU model, memory), the command and the lines of its
output that state a goal. What is outside the markers (notes written by people) is kept. The
exit status is 0 only if every script met its goals.

    .venv/bin/python benchmarks/run_all.py                 # all figures (~30 min)
    .venv/bin/python benchmarks/run_all.py --only p1,r2    # some; the others keep their record
    .venv/bin/python benchmarks/run_all.py --quick         # M2 for 1 minute instead of 10
    .venv/bin/python benchmarks/run_all.py --dry-run       # show the plan and the block, run nothing
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

BEGIN = "<!-- BEGIN make bench: written by benchmarks/run_all.py; edit outside these markers -->"
END = "<!-- END make bench -->"
EXIT_MEANINGS = {0: "met its goals", 1: "fell short of a goal", 2: "could not run (see its log)"}


@dataclass
class Figure:
    name: str
    script: str
    title: str
    timeout: int
    args: list[str] = field(default_factory=list)


# the order of benchmarks/README.md; the limits are its `timeout` values
FIGURES = [
    Figure("p1", "p1_turnaround.py", "P1 job turnaround vs papermill", 900),
    Figure("p1c", "p1_turnaround.py", "P1c job turnaround in containers vs papermill", 1500,
           ["--containers"]),
    Figure("p2", "p2_load.py", "P2 concurrent submissions, list latency", 1200),
    Figure("m1", "m1_memory.py", "M1 platform memory", 900),
    Figure("m1c", "m1_memory.py", "M1c platform memory in container mode", 900,
           ["--containers"]),
    Figure("p3", "p3_throughput.py", "P3 serving throughput and added latency", 1500),
    Figure("p4", "p4_autoscale.py", "P4 autoscaling and canary", 900),
    Figure("r2", "r2_replica_kill.py", "R2 a replica killed under load", 600),
    Figure("m2", "m2_memory.py", "M2 replica and router memory", 1200),
    Figure("p5", "p5_spawn.py", "P5 login to JupyterLab vs bare JupyterHub", 900),
    Figure("p5c", "p5_spawn.py", "P5c login to JupyterLab in a container vs bare DockerSpawner",
           1200, ["--containers"]),
]


def command_of(figure: Figure, results: Path, quick: bool) -> list[str]:
    extra = ["--minutes", "1"] if quick and figure.name == "m2" else []
    return [sys.executable, str(HERE / figure.script), "--json",
            str(results / f"{figure.name}.json"), *figure.args, *extra]


def shown(command: list[str]) -> str:
    """The command as a reader would type it from the repository root."""
    def rel(part: str) -> str:
        path = Path(part)
        return str(path.relative_to(REPO)) if path.is_absolute() and REPO in path.parents else part
    return " ".join(shlex.quote(rel(p)) for p in command)


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    # what this run writes itself (the results and this file) is not a change to what is measured
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)benchmarks/results", ":(exclude)benchmarks/RESULTS.md")
    return head + (" with local changes" if changed else "")


def describe_machine() -> dict:
    """The scripts' own record of the machine (common.machine), with the CPU and the memory."""
    from common import machine

    info = machine()
    info.pop("date", None)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu_model"] = "unknown"
    try:
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
        info["memory_gib"] = round(kib / 1024**2, 1)
    except (OSError, StopIteration):
        info["memory_gib"] = None
    return info


def machine_line(m: dict) -> str:
    return (f"{m['nproc']} cores, {m['cpu_model']}, {m['memory_gib']} GiB memory, "
            f"{m['platform']}, Python {m['python']}")


def run(figure: Figure, command: list[str], log_path: Path) -> tuple[int, list[str], float]:
    """Runs one script, its output both shown and kept; past its limit it gets SIGTERM (the
    scripts then stop what they started), and SIGKILL a minute later."""
    lines: list[str] = []
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)

        def pump():
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                lines.append(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            status = process.wait(figure.timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            status = 124  # as `timeout` reports it
            lines.append(f"(stopped: ran past its limit of {figure.timeout} s)")
        reader.join(10)
    return status, lines, time.monotonic() - started


def goal_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "goal" in line.lower() or "PASS" in line or "FAIL" in line
            or line.startswith("ERROR")]


def verdict(status: int | None) -> str:
    if status is None:
        return "not run yet"
    if status == 124:
        return "ran past its time limit"
    return EXIT_MEANINGS.get(status, f"failed (exit status {status})")


def render(records: dict) -> str:
    out = [BEGIN, "", "## The last `make bench` run of each figure", "",
           "Written by `benchmarks/run_all.py` from each script's exit status and output; the raw "
           "numbers are in `benchmarks/results/NAME.json`, the whole output in "
           "`benchmarks/results/NAME.log`.", "",
           "| Figure | Result | Exit | Started (UTC) | Wall | Commit |", "|---|---|---|---|---|---|"]
    for figure in FIGURES:
        r = records.get(figure.name)
        if r is None:
            out.append(f"| {figure.title} | not run yet | — | — | — | — |")
            continue
        result = verdict(r["status"])
        exit_status = "—" if r["status"] is None else r["status"]
        out.append(f"| {figure.title} | {f'**{result}**' if r['status'] else result} "
                   f"| {exit_status} | {r['started']} | {r['wall_s']:.0f} s | `{r['commit']}` |")
    for figure in FIGURES:
        r = records.get(figure.name)
        if r is None:
            continue
        out += ["", f"### {figure.title}", "",
                f"- Result: {verdict(r['status'])} (exit status {r['status']})",
                f"- Commit: `{r['commit']}`",
                f"- Machine: {machine_line(r['machine'])}; load average at start "
                f"{' / '.join(f'{x:.2f}' for x in r['machine']['loadavg_at_start'])}",
                f"- Command: `{r['command']}` (limit {r['timeout']} s)"]
        if r["goals"]:
            out += ["", "```", *r["goals"], "```"]
    out += ["", END]
    return "\n".join(out) + "\n"


def write_results(path: Path, block: str) -> None:
    """Replaces the marked block, or puts it under the title where there is none yet."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block.rstrip("\n") + rest.split(END, 1)[1]
    else:
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{block}\n{body.lstrip(chr(10))}"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated figures, e.g. p1,r2 (default: all)")
    parser.add_argument("--quick", action="store_true", help="M2 for 1 minute instead of 10")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the commands and the RESULTS.md block; run and write nothing")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md",
                        help="the file to record the run in (default benchmarks/RESULTS.md)")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="folder of each script's JSON and log (default benchmarks/results)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else [f.name for f in FIGURES]
    unknown = sorted(set(names) - {f.name for f in FIGURES})
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(f.name for f in FIGURES)}")
    chosen = [f for f in FIGURES if f.name in names]
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / "run_all.json"  # every figure's last record, for --only runs
    records = json.loads(state_path.read_text()) if state_path.exists() else {}
    failed = []
    for figure in chosen:
        command = command_of(figure, args.out, args.quick)
        record = {"commit": commit(), "machine": describe_machine(), "command": shown(command),
                  "timeout": figure.timeout,
                  "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")}
        if args.dry_run:
            print(f"would run ({figure.timeout} s limit): {record['command']}")
            records[figure.name] = {**record, "status": None, "wall_s": 0.0, "goals": [],
                                    "started": "—"}
            continue
        print(f"== {figure.title}: {record['command']}", flush=True)
        status, lines, wall = run(figure, command, args.out / f"{figure.name}.log")
        records[figure.name] = {**record, "status": status, "wall_s": wall,
                                "goals": goal_lines(lines)}
        if status != 0:
            failed.append(figure)
        print(f"== {figure.title}: {verdict(status)} ({wall:.0f} s)", flush=True)
        # recorded after each figure, so that a run stopped half-way keeps what it measured
        state_path.write_text(json.dumps(records, indent=2))
        write_results(args.results, render(records))
    if args.dry_run:
        sys.stdout.write(render(records))
        return 0
    print(f"Recorded in {args.results}.")
    if failed:
        print("Fell short or failed: " + ", ".join(f"{f.title} ({verdict(records[f.name]['status'])})"
                                                  for f in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
