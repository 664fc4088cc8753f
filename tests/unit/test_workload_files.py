"""Files in a workload's folder are read and written without following what the workload planted
(issue 12, hole 2): links, hard links, special files, a linked folder."""

from __future__ import annotations

import os

import pytest

from fermi_extension import workload_files
from fermi_extension.jobs.files import JobFiles
from fermi_extension.workload_files import UnsafeFile


@pytest.fixture
def folders(tmp_path):
    job = tmp_path / "jobs" / "mine"
    job.mkdir(parents=True)
    victim = tmp_path / "jobs" / "bobs" / "input.ipynb"
    victim.parent.mkdir()
    victim.write_text("bob's notebook")
    return JobFiles(job), victim


def test_a_regular_file_is_read_and_replaced(folders):
    files, _ = folders
    files.write(files.output, b"executed")
    assert files.read(files.output) == b"executed" and files.has(files.output)
    assert files.read(files.output, offset=2, limit=3) == b"ecu"
    assert oct(files.output.stat().st_mode & 0o777) == oct(0o600)


def test_a_symlink_is_not_read_through(folders):
    files, victim = folders
    files.output.symlink_to(victim)
    with pytest.raises(UnsafeFile, match="link"):
        files.read(files.output)
    assert not files.has(files.output)
    assert workload_files.read_json(files.root, "output.ipynb") is None


def test_a_hard_link_is_not_read(folders):
    files, victim = folders
    os.link(victim, files.output)
    with pytest.raises(UnsafeFile, match="hard link"):
        files.read(files.output)


def test_a_fifo_is_refused_without_hanging(folders):
    files, _ = folders
    os.mkfifo(files.log)
    with pytest.raises(UnsafeFile, match="not a regular file"):
        files.read(files.log)


def test_a_linked_folder_is_not_entered(folders, tmp_path):
    files, victim = folders
    (files.root / "work").symlink_to(victim.parent)
    with pytest.raises(UnsafeFile, match="not a folder"):
        workload_files.read_bytes(files.root, "work/input.ipynb")
    linked_job = tmp_path / "jobs" / "linked"
    linked_job.symlink_to(victim.parent)
    with pytest.raises(UnsafeFile):
        JobFiles(linked_job).read(linked_job / "input.ipynb")


def test_writing_over_a_planted_link_replaces_the_link_not_its_target(folders):
    """The Kubernetes backend writes the pod's log into the job folder: a planted link there must
    not turn that into a write to another user's file."""
    files, victim = folders
    files.log.symlink_to(victim)
    files.write(files.log, b"the pod's log")
    assert victim.read_text() == "bob's notebook"
    assert not files.log.is_symlink() and files.log.read_bytes() == b"the pod's log"


def test_appending_to_a_planted_link_is_refused(folders):
    files, victim = folders
    files.log.symlink_to(victim)
    with pytest.raises(UnsafeFile):
        files.append(files.log)
    assert victim.read_text() == "bob's notebook"


def test_a_new_attempt_removes_a_planted_log_link(folders):
    files, victim = folders
    files.log.symlink_to(victim)
    files.reset_attempt()
    assert not files.log.exists() and victim.exists()
