"""Links, FIFOs and directories planted where nhidel writes (issue 10, item 3 and finding 2).

The agent nhidel hands grants to may be able to write nhidel's home (SPEC, "Security model"),
and nhidel promises never to write through a link or file it planted there. So at every path
nhidel writes in its home, and at the temp names it used to predict, these tests plant a
symbolic link to the user's shell rc file, a dangling one (where an O_CREAT would make a new
file outside), a hard link to an empty file outside (a fine start for a log or a database), a
FIFO and a directory; then they run the legitimate commands, before `init` and after it. No
command may change anything outside the home, crash, or hang on the FIFO: each either refuses
with one error line and a non-zero exit, or succeeds without following the plant.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.support import Cli, Result

from nhidel.errors import IntegrityError, StorageError
from nhidel.fsutil import (
    atomic_write,
    check_sqlite_files,
    create_private_file,
    ensure_private_dir,
    exclusive_lock,
    open_private_append,
    read_private_file,
)
from nhidel.paths import Paths

PASSPHRASE = "planted paths"
SCOPE = "repo:read:acme/api"
RC = b"export PATH=$HOME/bin:$PATH\n"
URI = "https://status.example.com/nhidel/status.jwt"

STATE_FILES = (
    "config.toml", "config.lock", "keystore.json", "keystore.lock", "init.lock", "audit.jsonl",
    "audit.lock", "ledger.db", "ledger.db-wal", "ledger.db-shm", "ledger.db-journal",
)  # fmt: skip
# The names atomic_write used before these tests: `.<file>.<pid>.tmp`, opened O_CREAT|O_TRUNC.
TEMP_FILES = (".config.toml.{pid}.tmp", ".keystore.json.{pid}.tmp")
PLANTS = ("symlink", "dangling", "hardlink", "fifo", "directory")
# Only the file keystore writes these; every other path is tried with the (in-memory) keyring.
FILE_KEYSTORE_PATHS = ("keystore.json", "keystore.lock", ".keystore.json.{pid}.tmp")

Choose = Callable[[str], None]


def _cases(phase: str) -> Iterator[object]:
    for name in STATE_FILES + TEMP_FILES:
        for kind in PLANTS:
            yield pytest.param(name, kind, id=f"{name.format(pid='PID')}-{kind}")


class Outside:
    """Files of the user's outside nhidel's home, which no plant may get nhidel to touch."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.rc = root / ".bashrc"
        self.rc.write_bytes(RC)
        self.empty = root / "empty"
        self.empty.write_bytes(b"")
        self.absent = root / ".profile"  # a dangling link's target: must never come to be
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[bytes, int, int]]:
        return {
            p.name: (p.read_bytes(), p.stat().st_mtime_ns, stat.S_IMODE(p.stat().st_mode))
            for p in sorted(self.root.iterdir())
        }

    def assert_untouched(self) -> None:
        assert self.snapshot() == self.before
        assert not self.absent.exists()


@pytest.fixture
def outside(tmp_path: Path) -> Outside:
    return Outside(tmp_path / "outside")


def plant(path: Path, kind: str, outside: Outside) -> None:
    """Put `kind` at `path` in place of whatever is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()
    if kind == "symlink":
        path.symlink_to(outside.rc)
    elif kind == "dangling":
        path.symlink_to(outside.absent)
    elif kind == "hardlink":
        os.link(outside.empty, path)
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.mkdir(mode=0o700)


class FifoWatch:
    """Unsticks a command blocked opening a planted FIFO (and says so), so none hangs the run.

    A write end can be opened without blocking only while a reader has the FIFO open; opened
    and closed again, it hands that reader an end of file.
    """

    def __init__(self, fifos: list[Path], after: float = 1.0) -> None:
        self.fifos = fifos
        self.after = after
        self.stuck: list[Path] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> FifoWatch:
        if self.fifos:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.fifos:
            self._thread.join()

    def _watch(self) -> None:
        if self._stop.wait(self.after):
            return
        while not self._stop.wait(0.05):
            for fifo in self.fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue
                self.stuck.append(fifo)
                os.close(fd)


class Session:
    """Runs commands and checks each outcome: success, or one error line and a non-zero exit."""

    def __init__(
        self, cli: Cli, home: Path, planted: Path | None = None, plant: str | None = None
    ) -> None:
        self.cli = cli
        self.home = home
        self.planted = planted
        self.plant = plant
        self.refused = False

    def __call__(self, *args: str) -> Result:
        fifos = [p for p in self.home.iterdir() if stat.S_ISFIFO(p.lstat().st_mode)]
        with FifoWatch(fifos) as watch:
            result = self.cli(*args)  # an exception nhidel did not handle fails the test here
        assert not watch.stuck, f"{args} hung on the FIFO {watch.stuck[0]}"
        if result.exit_code == 0:
            return result
        assert "Traceback" not in result.stderr and "unexpected " not in result.stderr, args
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        if args[0] == "verify" and not errors:
            return result  # a denial: verify's answer, not an error
        assert len(errors) == 1, (args, result.stderr)
        if self.planted is not None and self.plant != "hardlink" and not self.refused:
            # The first refusal says what it refused. (A hard link is a regular file holding
            # another file's bytes: what nhidel says of those bytes need not name it.)
            assert self.planted.name in errors[0], (args, result.stderr)
        self.refused = True
        return result


def _grant(run: Session) -> dict[str, str] | None:
    result = run("grant", "reviewer", "--scope", SCOPE, "--format", "json")
    return json.loads(result.stdout) if result.exit_code == 0 else None


def _use_everything(run: Session) -> None:
    """The legitimate commands: each writes some of the files planted at."""
    run("agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    granted = _grant(run)
    if granted is not None:
        run("verify", granted["token"], "--scope", SCOPE)
        run("revoke", granted["id"])
        assert run("verify", granted["token"], "--scope", SCOPE).exit_code != 0
    run("agent", "add", "builder", "--allow", "ci:run:acme/*")
    run("audit", "verify")


@pytest.fixture
def keystore_for(monkeypatch: pytest.MonkeyPatch) -> Choose:
    """Choose the file keystore for the paths only it writes, the keyring for the rest."""

    def choose(name: str) -> None:
        if name in FILE_KEYSTORE_PATHS:
            monkeypatch.setenv("NHIDEL_KEYSTORE", "file")
            monkeypatch.setenv("NHIDEL_PASSPHRASE", PASSPHRASE)
            # The shipped scrypt cost is ~0.4 s a derivation; these tests are about files.
            monkeypatch.setattr("nhidel.keys.keystore._SCRYPT", {"n": 2**14, "r": 8, "p": 1})

    return choose


@pytest.mark.parametrize(("name", "kind"), _cases("before init"))
def test_a_plant_before_init_is_never_written_through(
    name: str, kind: str, cli: Cli, nhidel_home: Path, outside: Outside, keystore_for: Choose
) -> None:
    keystore_for(name)
    nhidel_home.mkdir(mode=0o700)
    target = nhidel_home / name.format(pid=os.getpid())
    plant(target, kind, outside)
    run = Session(cli, nhidel_home, target, kind)
    if run("init", "--principal", "alice").exit_code == 0:
        _use_everything(run)
    outside.assert_untouched()


@pytest.mark.parametrize(("name", "kind"), _cases("live"))
def test_a_plant_in_a_live_home_is_never_written_through(
    name: str, kind: str, cli: Cli, nhidel_home: Path, outside: Outside, keystore_for: Choose
) -> None:
    keystore_for(name)
    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "tester", "--allow", "repo:read:acme/*")
    cli.ok("grant", "tester", "--scope", SCOPE)
    target = nhidel_home / name.format(pid=os.getpid())
    plant(target, kind, outside)
    _use_everything(Session(cli, nhidel_home, target, kind))
    outside.assert_untouched()


# -- the home directory itself ------------------------------------------------------------


def test_a_home_writable_by_group_or_others_is_refused_not_tightened(
    cli: Cli, nhidel_home: Path
) -> None:
    nhidel_home.mkdir()
    nhidel_home.chmod(0o770)
    result = cli("init", "--principal", "alice")
    assert result.exit_code == 1
    assert f"error: {nhidel_home} is writable by group or others" in result.stderr
    assert f"chmod 700 {nhidel_home}" in result.stderr
    assert stat.S_IMODE(nhidel_home.stat().st_mode) == 0o770
    assert list(nhidel_home.iterdir()) == []


def test_a_home_readable_by_others_is_tightened(cli: Cli, nhidel_home: Path) -> None:
    nhidel_home.mkdir()
    nhidel_home.chmod(0o755)
    cli.ok("init", "--principal", "alice")
    assert stat.S_IMODE(nhidel_home.stat().st_mode) == 0o700


def test_a_link_in_place_of_the_home_is_refused(
    cli: Cli, nhidel_home: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    nhidel_home.symlink_to(elsewhere)
    result = cli("init", "--principal", "alice")
    assert result.exit_code == 1
    assert f"error: {nhidel_home} is a symbolic link, not a directory" in result.stderr
    assert list(elsewhere.iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a file to another user")
def test_a_home_or_file_of_another_user_is_refused(cli: Cli, nhidel_home: Path) -> None:
    cli.ok("init", "--principal", "alice")
    config = nhidel_home / "config.toml"
    os.chown(config, 4242, -1)
    result = cli("agent", "add", "reviewer", "--allow", "repo:read:acme/*")
    assert result.exit_code == 5 and f"{config} belongs to another user" in result.stderr
    os.chown(config, 0, -1)
    os.chown(nhidel_home, 4242, -1)
    result = cli("agent", "add", "reviewer", "--allow", "repo:read:acme/*")
    assert result.exit_code == 1 and f"{nhidel_home} belongs to another user" in result.stderr


@pytest.mark.parametrize("name", ["config.toml", "audit.lock", "init.lock", "config.lock"])
def test_a_state_file_writable_by_others_is_refused(
    ready: Cli, nhidel_home: Path, name: str
) -> None:
    (nhidel_home / name).chmod(0o622)
    result = ready("agent", "add", "builder", "--allow", "ci:run:acme/*")
    result = result if result.exit_code else ready("init", "--principal", "alice")
    assert result.exit_code == 5
    assert f"error: {nhidel_home / name} is writable by group or others" in result.stderr
    assert f"hint: chmod 600 {nhidel_home / name}" in result.stderr


# -- the functions themselves -------------------------------------------------------------


def test_atomic_write_uses_a_new_unpredictable_name_each_time(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    names: list[str] = []
    real_replace = os.replace

    def spy(src: str, dst: str, **kwargs: int) -> None:
        names.append(src)
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr("nhidel.fsutil.os.replace", spy)
    target = paths.state_dir / "file"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert len(set(names)) == 2 and all(str(os.getpid()) not in n for n in names)
    assert all(len(n) > 32 for n in names)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in paths.state_dir.iterdir()) == ["file"]


@pytest.mark.parametrize("kind", PLANTS)
def test_atomic_write_refuses_to_replace_anything_but_a_regular_file(
    paths: Paths, outside: Outside, kind: str
) -> None:
    target = ensure_private_dir(paths.state_dir) / "config.toml"
    plant(target, kind, outside)
    if kind == "hardlink":  # replaced by a rename: the other name keeps its file
        atomic_write(target, b"new")
        assert target.read_bytes() == b"new" and target.stat().st_nlink == 1
    else:
        with pytest.raises(IntegrityError, match="config.toml is a"):
            atomic_write(target, b"new")
        assert sorted(p.name for p in paths.state_dir.iterdir()) == ["config.toml"]
    outside.assert_untouched()


@pytest.mark.parametrize("kind", PLANTS)
@pytest.mark.parametrize(
    "open_it",
    [
        pytest.param(lambda p: os.close(open_private_append(p)), id="open_private_append"),
        pytest.param(create_private_file, id="create_private_file"),
        pytest.param(lambda p: exclusive_lock(p).__enter__(), id="exclusive_lock"),
        pytest.param(read_private_file, id="read_private_file"),
    ],
)
def test_files_opened_in_place_refuse_every_plant(
    paths: Paths, outside: Outside, kind: str, open_it: object
) -> None:
    target = ensure_private_dir(paths.state_dir) / "audit.jsonl"
    plant(target, kind, outside)
    if kind == "hardlink" and open_it is read_private_file:
        assert read_private_file(target) == b""  # reading writes nothing through it
    else:
        with pytest.raises(IntegrityError, match="audit.jsonl (is|has)"):
            open_it(target)  # type: ignore[operator]
    outside.assert_untouched()


def test_open_private_append_creates_a_private_file_and_appends(paths: Paths) -> None:
    target = paths.state_dir / "audit.jsonl"
    for line in (b"one\n", b"two\n"):
        fd = open_private_append(target)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    assert target.read_bytes() == b"one\ntwo\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
@pytest.mark.parametrize("kind", PLANTS)
def test_check_sqlite_files_refuses_a_plant_at_the_database_or_a_side_file(
    paths: Paths, outside: Outside, suffix: str, kind: str
) -> None:
    db = ensure_private_dir(paths.state_dir) / "ledger.db"
    check_sqlite_files(db)  # nothing there yet: fine
    db.write_bytes(b"")
    target = db.with_name("ledger.db" + suffix)
    plant(target, kind, outside)
    with pytest.raises(IntegrityError, match=f"ledger.db{suffix} (is|has)") as raised:
        check_sqlite_files(db)
    assert raised.value.exit_status == 5
    if kind in ("symlink", "dangling", "hardlink"):
        assert raised.value.hint == "remove it; nhidel never writes through a link"


def test_a_lock_file_turned_fifo_does_not_block(paths: Paths) -> None:
    lock = ensure_private_dir(paths.state_dir) / "audit.lock"
    os.mkfifo(lock)
    with pytest.raises(IntegrityError, match="is a named pipe"), exclusive_lock(lock):
        pass


def test_a_storage_error_names_a_plant_in_place_of_the_state_directory(
    paths: Paths, outside: Outside
) -> None:
    paths.state_dir.parent.mkdir(parents=True, exist_ok=True)
    paths.state_dir.symlink_to(outside.root)
    with pytest.raises(StorageError, match="is a symbolic link, not a directory"):
        atomic_write(paths.keystore_file, b"{}")
    outside.assert_untouched()


# -- status publish --out and publish --out -----------------------------------------------


@pytest.fixture
def publishing(ready: Cli) -> Cli:
    ready.ok("config", "set", "status-uri", URI)
    return ready


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo"])
def test_status_publish_replaces_only_a_regular_file(
    publishing: Cli, outside: Outside, tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "www" / "status.jwt"
    out.parent.mkdir()
    plant(out, kind, outside)
    run = Session(publishing, out.parent, out)
    result = run("status", "publish", "--out", str(out))
    assert result.exit_code == 2
    assert "nhidel replaces only a regular file" in result.stderr
    outside.assert_untouched()
    assert sorted(p.name for p in out.parent.iterdir()) == ["status.jwt"]


def test_status_publish_replaces_a_regular_file_and_leaves_its_hard_link_alone(
    publishing: Cli, outside: Outside, tmp_path: Path
) -> None:
    out = tmp_path / "status.jwt"
    plant(out, "hardlink", outside)
    publishing.ok("status", "publish", "--out", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and out.read_text().count(".") == 2
    outside.assert_untouched()


@pytest.mark.parametrize("name", ["jwks.json", "status.jwt"])
@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "directory"])
def test_publish_writes_neither_file_when_one_name_is_planted(
    publishing: Cli, outside: Outside, tmp_path: Path, name: str, kind: str
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    plant(site / name, kind, outside)
    result = Session(publishing, site, site / name)("publish", "--out", str(site))
    assert result.exit_code == 2 and f"{site / name} is a" in result.stderr
    assert [p.name for p in site.iterdir()] == [name]
    outside.assert_untouched()


def test_publish_into_a_fifo_is_refused(publishing: Cli, tmp_path: Path) -> None:
    site = tmp_path / "site"
    os.mkfifo(site)
    result = Session(publishing, tmp_path, site)("publish", "--out", str(site))
    assert result.exit_code == 2 and f"{site} is a named pipe, not a directory" in result.stderr
