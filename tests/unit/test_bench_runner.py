"""`make bench` (benchmarks/run_all.py): every figure runs even after one falls short, the run
fails at the end, and RESULTS.md records each figure with its commit, machine and command."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_all(monkeypatch):
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "run_all", module)
    spec.loader.exec_module(module)
    return module


def script(folder: Path, name: str, body: str) -> str:
    path = folder / name
    path.write_text(body)
    return str(path)


def test_a_figure_that_falls_short_does_not_stop_the_others(run_all, tmp_path, capsys):
    ran = tmp_path / "ran"
    short = script(tmp_path, "short.py", f"open({str(ran)!r}, 'a').write('short ')\n"
                   "print('S1 ratio: 1.4  goal <= 1.0: FAIL'); raise SystemExit(1)\n")
    fine = script(tmp_path, "fine.py", f"open({str(ran)!r}, 'a').write('fine')\n"
                  "print('noise'); print('F1 p99 3 ms (goal <= 50 ms: PASS)')\n")
    run_all.FIGURES[:] = [run_all.Figure("s1", short, "S1 short", 60),
                          run_all.Figure("f1", fine, "F1 fine", 60)]
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nNotes people wrote.\n")

    status = run_all.main(["--results", str(results), "--out", str(tmp_path / "out")])

    assert status == 1  # the target fails at the end
    assert ran.read_text() == "short fine"  # …after running the figure that came next
    assert "S1 short (fell short of a goal)" in capsys.readouterr().err
    text = results.read_text()
    assert text.startswith("# Benchmark results\n") and "Notes people wrote." in text
    assert "| S1 short | **fell short of a goal** | 1 |" in text
    assert "| F1 fine | met its goals | 0 |" in text
    assert "S1 ratio: 1.4  goal <= 1.0: FAIL" in text and "noise" not in text
    machine = run_all.describe_machine()
    assert f"{machine['nproc']} cores, {machine['cpu_model']}, {machine['memory_gib']} GiB" in text
    assert f"`{run_all.commit()}`" in text
    assert (tmp_path / "out" / "s1.log").read_text().startswith("S1 ratio")

    # a second run replaces the block; --only keeps the other figure's record
    assert run_all.main(["--only", "f1", "--results", str(results),
                         "--out", str(tmp_path / "out")]) == 0
    again = results.read_text()
    assert again.count(run_all.BEGIN) == 1 and again.count("Notes people wrote.") == 1
    assert "| S1 short | **fell short of a goal** |" in again


def test_a_figure_past_its_limit_is_stopped_and_recorded(run_all, tmp_path):
    slow = script(tmp_path, "slow.py", "import time\nprint('started', flush=True)\n"
                  "time.sleep(60)\n")
    run_all.FIGURES[:] = [run_all.Figure("z1", slow, "Z1 slow", 1)]
    results = tmp_path / "RESULTS.md"
    assert run_all.main(["--results", str(results), "--out", str(tmp_path / "out")]) == 1
    assert "| Z1 slow | **ran past its time limit** | 124 |" in results.read_text()
