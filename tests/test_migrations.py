"""The platform database changes only through Alembic revisions (fermi_extension/migrations).

- the revisions and the models agree (what `alembic check` checks): a model changed without a
  revision fails here;
- a database of Fermi 0.1.0 (no ``alembic_version``) is recognised, brought to the baseline
  (the hand ALTERs' end state) and stamped, with a copy kept aside;
- two processes starting at once on one database both succeed, and upgrade it once;
- `fermi db upgrade` does it from the command line;
- the data dir made by 0.1.0 (tests/fixtures/datadir-0.1.0.tar.gz, made by make_datadir.py)
  starts on this version with every job, output notebook, model version, deployment,
  catalogue revision, audit record and user intact, as users see them through the API.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from fermi_extension.db import (Base, alembic_config, current_revision, head_revision,
                                make_engine, make_session_factory, upgrade_if_needed)

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "datadir-0.1.0.tar.gz"
BASELINE = "5d1c0a7e3b21"


def unpack(tmp_path: Path) -> tuple[Path, dict]:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    data = tmp_path / "datadir"
    return data, json.loads((data / "fixture.json").read_text())


def differences(url: str) -> list:
    with make_engine(url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def revision_of(path: Path) -> str | None:
    with make_engine(f"sqlite:///{path}").connect() as connection:
        return current_revision(connection)


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.*.bak"))


# -- the revisions are the schema -----------------------------------------------------------------


def test_the_revisions_make_exactly_the_models_schema(tmp_path):
    """Fails when a model changes without a revision: write one as
    fermi_extension/migrations/README.md says."""
    scripts = ScriptDirectory.from_config(alembic_config())
    assert len(scripts.get_heads()) == 1, "the revisions branch: merge them"
    assert scripts.get_base() == BASELINE
    url = f"sqlite:///{tmp_path / 'fermi.sqlite'}"
    make_session_factory(url)
    assert revision_of(tmp_path / "fermi.sqlite") == head_revision()
    assert differences(url) == []
    assert backups(tmp_path / "fermi.sqlite") == []  # a new database has nothing to keep


def test_the_check_sees_a_model_changed_without_a_revision(tmp_path):
    url = f"sqlite:///{tmp_path / 'fermi.sqlite'}"
    make_session_factory(url)
    changed = sa.MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["jobs"].append_column(sa.Column("colour", sa.String(16), nullable=True))
    with make_engine(url).connect() as connection:
        found = compare_metadata(MigrationContext.configure(connection), changed)
    assert [(d[0], d[2], d[3].name) for d in found] == [("add_column", "jobs", "colour")]


# -- databases made by 0.1.0 ----------------------------------------------------------------------


def test_a_database_of_0_1_0_is_recognised_stamped_and_kept_aside(tmp_path):
    data, facts = unpack(tmp_path)
    path = data / "fermi.sqlite"
    assert revision_of(path) is None  # 0.1.0 knew no revisions
    with sqlite3.connect(path) as db:
        jobs_before = db.execute("SELECT id, status FROM jobs").fetchall()
    assert upgrade_if_needed(f"sqlite:///{path}") is True
    assert revision_of(path) == head_revision()
    assert differences(f"sqlite:///{path}") == []
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT id, status FROM jobs").fetchall() == jobs_before
        assert (facts["job"]["id"], "succeeded") in jobs_before
    [backup] = backups(path)
    assert revision_of(backup) is None  # the database as 0.1.0 left it
    with sqlite3.connect(backup) as db:
        assert db.execute("SELECT id, status FROM jobs").fetchall() == jobs_before
    assert upgrade_if_needed(f"sqlite:///{path}") is False  # once only
    assert len(backups(path)) == 1


def test_an_older_database_gets_the_columns_and_indexes_the_hand_alters_added(tmp_path):
    data, facts = unpack(tmp_path)
    path = data / "fermi.sqlite"
    with sqlite3.connect(path) as db:  # as a version before the Kubernetes backend left it
        db.execute("DROP INDEX ix_jobs_created")
        db.execute("ALTER TABLE jobs DROP COLUMN handle_name")
        db.execute("ALTER TABLE replicas DROP COLUMN handle_name")
        db.execute("DROP TABLE image_builds")
    make_session_factory(f"sqlite:///{path}")
    assert differences(f"sqlite:///{path}") == []
    with sqlite3.connect(path) as db:
        assert "handle_name" in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        assert "handle_name" in {row[1] for row in db.execute("PRAGMA table_info(replicas)")}
        assert db.execute("SELECT handle_name FROM jobs WHERE id = ?",
                          (facts["job"]["id"],)).fetchone() == (None,)


def test_a_database_that_cannot_be_brought_to_the_baseline_says_why(tmp_path):
    path = tmp_path / "fermi.sqlite"
    with sqlite3.connect(path) as db:  # a "jobs" table of something else
        db.execute("CREATE TABLE jobs (id VARCHAR(32) PRIMARY KEY)")
    result = subprocess.run([sys.executable, "-m", "fermi_extension.cli", "db", "upgrade",
                             "--db-url", f"sqlite:///{path}"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "lacks the column name" in result.stderr and "Traceback" not in result.stderr
    assert revision_of(path) is None


# -- two processes at once ------------------------------------------------------------------------

OPEN = """
import sys
from fermi_extension.db import make_session_factory
print("ready", flush=True)
sys.stdin.readline()  # both start together: the parent answers once both are ready
make_session_factory(sys.argv[1])
print("done", flush=True)
"""


def open_at_once(url: str, processes: int = 2) -> list[subprocess.CompletedProcess]:
    started = [subprocess.Popen([sys.executable, "-c", OPEN, url], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(processes)]
    for process in started:
        assert process.stdout.readline() == "ready\n", process.stderr.read()
    for process in started:
        process.stdin.write("go\n")
        process.stdin.flush()
    results = []
    for process in started:
        out, err = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def test_two_processes_starting_at_once_on_a_new_database_both_succeed(tmp_path):
    path = tmp_path / "fermi.sqlite"
    results = open_at_once(f"sqlite:///{path}")
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert differences(f"sqlite:///{path}") == []
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (head_revision(),)]


def test_two_processes_starting_at_once_on_an_old_database_upgrade_it_once(tmp_path):
    data, _ = unpack(tmp_path)
    path = data / "fermi.sqlite"
    results = open_at_once(f"sqlite:///{path}")
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert differences(f"sqlite:///{path}") == []
    assert len(backups(path)) == 1
    assert sum("kept at" in r.stderr for r in results) == 1  # one upgraded, one found it done


# -- `fermi db upgrade` ---------------------------------------------------------------------------


def fermi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fermi_extension.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_fermi_db_upgrade_upgrades_a_data_dir_and_says_where_the_copy_is(tmp_path):
    data, _ = unpack(tmp_path)
    first = fermi("db", "upgrade", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr
    [backup] = backups(data / "fermi.sqlite")
    assert str(backup) in first.stderr
    assert f"now at schema revision {head_revision()}" in first.stdout
    again = fermi("db", "upgrade", "--data-dir", str(data))
    assert again.returncode == 0 and "already up to date" in again.stdout
    missing = fermi("db", "upgrade", "--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no platform database at" in missing.stderr
    assert not (tmp_path / "nowhere").exists()


def test_fermi_up_upgrades_first_and_prints_where_the_copy_is(tmp_path, capsys, monkeypatch):
    from fermi_extension.up import upgrade_database

    monkeypatch.delenv("FERMI_DB_URL", raising=False)
    data, _ = unpack(tmp_path)
    assert upgrade_database(data) is True
    [backup] = backups(data / "fermi.sqlite")
    assert f"kept at {backup}" in capsys.readouterr().out
    assert upgrade_database(data) is True and capsys.readouterr().out == ""  # nothing to do

    broken = tmp_path / "broken"
    broken.mkdir()
    with sqlite3.connect(broken / "fermi.sqlite") as db:
        db.execute("CREATE TABLE jobs (id VARCHAR(32) PRIMARY KEY)")
    assert upgrade_database(broken) is False  # `fermi up` then starts nothing
    assert "could not be upgraded" in capsys.readouterr().err


# -- the data dir of 0.1.0 on this version, through the API -----------------------------------------


@pytest.mark.hub
def test_the_data_dir_of_0_1_0_starts_on_this_version_with_nothing_lost(tmp_path):
    from .platform import User, make_notebook, start_platform

    data, facts = unpack(tmp_path)
    platform = start_platform(data, admin_token=facts["admin_token"],
                              env={"FERMI_ADMIN_PASSWORD": facts["admin_password"]})
    try:
        assert revision_of(data / "fermi.sqlite") == head_revision()
        assert len(backups(data / "fermi.sqlite")) == 1
        admin = platform.admin
        # the researcher still logs in with the password chosen at sign-up
        with httpx.Client(base_url=platform.url, follow_redirects=True, timeout=60) as browser:
            browser.get("/hub/login")
            logged_in = browser.post("/hub/login", data={
                "username": facts["user"], "password": facts["password"],
                "_xsrf": browser.cookies.get("_xsrf", "")})
            assert logged_in.status_code == 200 and "/hub/login" not in str(logged_in.url)
        token = admin.http.post(f"/hub/api/users/{facts['user']}/tokens",
                                json={"note": "after the upgrade"}).json()["token"]
        user = User(facts["user"], token, platform.url)

        job = user.job(facts["job"]["id"])
        assert (job["name"], job["status"], job["parameters"], job["metrics"]) == (
            facts["job"]["name"], "succeeded", facts["job"]["parameters"], facts["job"]["metrics"])
        output = user.api("GET", f"jobs/{job['id']}/output")
        assert output.status_code == 200 and "trained" in output.text
        assert job["id"] in [j["id"] for j in user.api("GET", "jobs").json()["jobs"]]

        model = user.api("GET", f"models/{facts['model']['name']}").json()
        assert sorted(v["version"] for v in model["versions"]) == facts["model"]["versions"]
        assert model["versions"][0]["job"]["id"] == job["id"]

        deployment = facts["deployment"]
        deadline = time.monotonic() + 120
        while (described := user.api("GET", f"deployments/{deployment['name']}").json())[
                "status"] != "ready":
            assert described["status"] != "failed" and time.monotonic() < deadline, described
            time.sleep(0.3)  # polling the observable status, with a deadline
        assert described["model"] == deployment["model"]
        rows = deployment["rows"]
        answer = httpx.post(
            f"{described['url']}/v2/models/{deployment['model']}/infer", timeout=60,
            headers={"Authorization": f"Bearer {deployment['api_key']}"},  # the key made by 0.1.0
            json={"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])],
                              "datatype": "FP64", "data": [x for row in rows for x in row]}]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == deployment["outputs"]

        catalog = facts["catalog"]
        item = admin.api("GET", f"catalog/{catalog['kind']}/{catalog['slug']}").json()
        assert (item["revision"], item["description"]) == (catalog["revision"],
                                                           catalog["description"])
        history = admin.api("GET", f"catalog/{catalog['kind']}/{catalog['slug']}/history").json()
        assert [(r["revision"], r["by"]) for r in history["revisions"]][0] == (
            catalog["revision"], "admin")
        assert [r["revision"] for r in history["revisions"]] == list(
            range(catalog["revision"], 0, -1))  # every earlier revision too

        events = admin.api("GET", "audit", params={"limit": 1000}).json()["events"]
        seen = {(e["action"], e["target_kind"], e["target_id"]) for e in events}
        assert {tuple(e) for e in facts["audit"]} <= seen

        # and the upgraded platform keeps working: a new job runs
        new = user.wait(user.submit(make_notebook("print('after the upgrade')"))["id"])
        assert new["status"] == "succeeded", new
    finally:
        platform.stop()


# -- PostgreSQL: the same revisions, an advisory lock ---------------------------------------------


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of this machine's own (Debian's postgresql), on a free port, for
    this module; skipped where the server is not installed."""
    import glob
    import os
    import shutil
    import tempfile

    from fermi_extension.processes import free_port

    pytest.importorskip("psycopg")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    if not found[-1]:
        pytest.skip("PostgreSQL's server (initdb) is not installed")
    bin_dir = Path(found[-1]).parent
    # the server refuses to run as root: as the postgres account, in a folder it may enter
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="fermi-pg-"))
    if as_owner:
        shutil.chown(root, "postgres")
    port = free_port()
    run = lambda *a: subprocess.run([*as_owner, *a], check=True, capture_output=True, timeout=120)  # noqa: E731
    try:
        run(str(bin_dir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "fermi")
        run(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-w", "-l", str(root / "log"),
            "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
        yield f"postgresql+psycopg://fermi@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_owner, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m",
                        "fast", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres, request):
    name = "t_" + request.node.name.lower()[:50].replace("-", "_")
    admin = sa.create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{postgres}/{name}"


def test_two_processes_starting_at_once_on_postgresql_both_succeed(pg_url):
    results = open_at_once(pg_url)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert differences(pg_url) == []
    with make_engine(pg_url).connect() as connection:
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [
            (head_revision(),)]


def test_on_postgresql_a_second_process_waits_for_the_schema_lock(pg_url):
    from fermi_extension.db import schema_lock

    engine = make_engine(pg_url)
    with schema_lock(engine):
        waiting = subprocess.Popen([sys.executable, "-c", OPEN, pg_url], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert waiting.stdout.readline() == "ready\n"
        waiting.stdin.write("go\n")
        waiting.stdin.flush()
        deadline = time.monotonic() + 60
        with engine.connect() as observer:
            while not observer.execute(sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )).scalar():
                assert time.monotonic() < deadline and waiting.poll() is None, waiting.stderr.read()
                observer.rollback()
                time.sleep(0.05)  # polling pg_locks, with a deadline
        assert waiting.poll() is None  # blocked on the lock, not done
        assert not sa.inspect(engine).has_table("jobs")
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and out.endswith("done\n"), err
    assert differences(pg_url) == []


def test_an_older_postgresql_database_waits_for_fermi_db_upgrade(pg_url):
    from fermi_extension.db import DatabaseSchemaMismatch

    make_session_factory(pg_url)
    with make_engine(pg_url).begin() as connection:  # as 0.1.0 left it: tables, no revision
        connection.execute(sa.text("DROP TABLE alembic_version"))
    with pytest.raises(DatabaseSchemaMismatch, match="back it up, then run `fermi db upgrade`"):
        make_session_factory(pg_url)
    upgraded = fermi("db", "upgrade", "--db-url", pg_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"now at schema revision {head_revision()}" in upgraded.stdout
    make_session_factory(pg_url)
    assert differences(pg_url) == []
