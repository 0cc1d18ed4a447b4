"""What `nhidel doctor` asks of nhidel's files: what is wrong with each (every refusal a write
makes, plus files and directories others may read), and a lock that keeps writers out while it
reads; looking changes nothing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nhidel.errors import ExitStatus, IntegrityError, StorageError
from nhidel.fsutil import (
    exclusive_lock,
    private_dir_problem,
    private_file_problem,
    shared_lock,
)


def made(path: Path, mode: int) -> Path:
    path.write_bytes(b"x")
    path.chmod(mode)
    return path


def test_a_missing_file_or_a_private_one_has_no_problem(tmp_path: Path) -> None:
    assert private_file_problem(tmp_path / "missing", in_place=True) is None
    assert private_file_problem(made(tmp_path / "ok", 0o600), in_place=True) is None
    assert private_dir_problem(tmp_path / "missing") is None


def test_a_file_others_may_read_gets_the_chmod_to_run(tmp_path: Path) -> None:
    path = made(tmp_path / "config.toml", 0o644)
    found = private_file_problem(path, in_place=False)
    assert found is not None
    assert found.message == f"{path} is readable by group or others (mode 644)"
    assert found.hint == f"chmod 600 {path}"
    assert found.exit_status == ExitStatus.DENIED
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # only looked


@pytest.mark.parametrize("mode", [0o620, 0o602])
def test_a_file_others_may_write_is_refused_as_writes_refuse_it(tmp_path: Path, mode: int) -> None:
    path = made(tmp_path / "ledger.db", mode)
    found = private_file_problem(path, in_place=True)
    assert isinstance(found, IntegrityError)
    assert found.hint == f"chmod 600 {path}"


def test_a_link_is_refused_and_a_second_name_only_where_files_are_written_in_place(
    tmp_path: Path,
) -> None:
    target = made(tmp_path / "target", 0o600)
    link = tmp_path / "audit.lock"
    link.symlink_to(target)
    found = private_file_problem(link, in_place=True)
    assert found is not None and found.message == f"{link} is a symbolic link"
    os.link(target, tmp_path / "second")
    assert private_file_problem(target, in_place=True) is not None
    assert private_file_problem(target, in_place=False) is None  # replaced whole by a rename


def test_a_directory_others_may_read_gets_the_chmod_to_run_and_is_not_tightened(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o750)
    home.chmod(0o750)
    found = private_dir_problem(home)
    assert found is not None and found.hint == f"chmod 700 {home}"
    assert stat.S_IMODE(home.stat().st_mode) == 0o750  # a write would tighten it; doctor looks


def test_a_directory_others_may_write_or_a_link_to_one_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o770)
    assert isinstance(private_dir_problem(shared), StorageError)
    link = tmp_path / "home"
    link.symlink_to(shared)
    found = private_dir_problem(link)
    assert found is not None and found.message == f"{link} is a symbolic link, not a directory"


def test_a_shared_lock_keeps_writers_out_while_held_and_creates_nothing(tmp_path: Path) -> None:
    lock = made(tmp_path / "audit.lock", 0o600)
    with shared_lock(lock, timeout=1) as held:
        assert held
        with pytest.raises(StorageError), exclusive_lock(lock, timeout=0.05):
            pass
    with exclusive_lock(lock, timeout=0.05):  # free again
        with shared_lock(lock, timeout=0.05) as held:
            assert not held  # a writer holds it: the reader waited no longer than told
    with shared_lock(tmp_path / "missing.lock", timeout=1) as held:
        assert not held
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.lock"]
