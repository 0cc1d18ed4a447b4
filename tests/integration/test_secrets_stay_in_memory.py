"""Secrets stay in the process that holds them (SPEC "Keystore"; issue 10, finding 8).

Each test runs a real child process, since what is checked is process state: its core limit,
whether the kernel lets another process dump or trace it, and the environment it and its own
children have. The keystores the children open are made here at scrypt's lowest accepted cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import TIMEOUT, isolated_env

from nhidel.hardening import PASSPHRASE_VARIABLE, withheld_from_environment
from nhidel.keys import keystore
from nhidel.keys.keystore import open_keystore
from nhidel.paths import Paths

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

PASSPHRASE = "a passphrase nobody else may see"
TRUST = {"issuer": "nhidel:alice", "keys": {}}

# The child: read one entry as nhidel does (the keystore from os.environ), report its state
# before and after, then wait so that the parent can look at it from outside.
_READ_ONE_ENTRY = """
import json, os, resource, subprocess, sys
from nhidel import hardening
from nhidel.paths import Paths
from nhidel.keys.keystore import open_keystore

def state():
    return {
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "dumpable": hardening.is_dumpable(),
        "in_environ": "NHIDEL_PASSPHRASE" in os.environ,
        "in_environ_block": sys.argv[1].encode() in open("/proc/self/environ", "rb").read(),
    }

before = state()
entry = open_keystore(Paths.from_env()).read("trust")
# A second keystore in the same process (the Python API) still opens: the passphrase moved
# from the environment into the process, not away.
again = open_keystore(Paths.from_env()).read("trust")
grandchild = subprocess.run(
    [sys.executable, "-c", "import os; print('NHIDEL_PASSPHRASE' in os.environ)"],
    capture_output=True, text=True, check=True,
).stdout.strip()
after = state()
print(json.dumps({"before": before, "after": after, "entry": entry, "again": again,
                  "grandchild_has_it": grandchild, "marker": os.environ.get("AFTER_IT")}))
sys.stdout.flush()
sys.stdin.readline()
"""


@pytest.fixture
def keystore_home(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.setitem(keystore._SCRYPT, "n", 2**14)
    store = open_keystore(paths, env={"NHIDEL_KEYSTORE": "file", PASSPHRASE_VARIABLE: PASSPHRASE})
    store.write("trust", TRUST)
    return paths


def _limits(pid: int) -> str:
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()
    return next(line for line in lines if line.startswith("Max core file size"))


def test_a_process_that_read_the_keystore_dumps_no_core_and_cannot_be_read_from_outside(
    keystore_home: Paths, tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE=PASSPHRASE)
    env["AFTER_IT"] = "still here"  # the variables around the passphrase are left alone
    child = subprocess.Popen(
        [sys.executable, "-c", _READ_ONE_ENTRY, PASSPHRASE],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line, child.communicate(timeout=TIMEOUT)[1]
        report: dict[str, Any] = json.loads(line)
        # From outside, while it runs: no core file at any size, and its memory and
        # environment are closed to the user's other processes (root still reads them).
        assert _limits(child.pid).split()[-3:] == ["0", "0", "bytes"]
        if os.geteuid() != 0:
            for name in ("environ", "mem"):
                with pytest.raises(PermissionError):
                    Path(f"/proc/{child.pid}/{name}").read_bytes()
        else:
            assert PASSPHRASE.encode() not in Path(f"/proc/{child.pid}/environ").read_bytes()
    finally:
        child.communicate(input="\n", timeout=TIMEOUT)
    assert child.returncode == 0

    assert report["entry"] == report["again"] == TRUST
    assert report["before"]["dumpable"] is True and report["before"]["in_environ"] is True
    assert report["before"]["in_environ_block"] is True
    assert report["after"] == {
        "core": [0, 0],
        "dumpable": False,
        "in_environ": False,
        "in_environ_block": False,
    }
    assert report["grandchild_has_it"] == "False"
    assert report["marker"] == "still here"


def test_a_passphrase_given_in_a_mapping_leaves_os_environ_alone(
    keystore_home: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_VARIABLE, "the caller's own")
    env = {"NHIDEL_KEYSTORE": "file", PASSPHRASE_VARIABLE: PASSPHRASE}
    assert open_keystore(keystore_home, env=env).read("trust") == TRUST
    assert os.environ[PASSPHRASE_VARIABLE] == "the caller's own"
    assert env[PASSPHRASE_VARIABLE] == PASSPHRASE


def test_withheld_variables_are_gone_inside_the_block_and_back_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSPHRASE_VARIABLE, "withheld")
    monkeypatch.delenv("NHIDEL_PASSPHRASE_FILE", raising=False)
    with withheld_from_environment([PASSPHRASE_VARIABLE, "NHIDEL_PASSPHRASE_FILE"]):
        assert PASSPHRASE_VARIABLE not in os.environ
        inherited = subprocess.run(
            [sys.executable, "-c", "import os; print(os.environ.get('NHIDEL_PASSPHRASE'))"],
            capture_output=True,
            text=True,
            check=True,
            timeout=TIMEOUT,
        ).stdout.strip()
        assert inherited == "None"
    assert os.environ[PASSPHRASE_VARIABLE] == "withheld"
    assert "NHIDEL_PASSPHRASE_FILE" not in os.environ


# The child: `nhidel audit verify` itself, with the parallel check made to start at once, and
# each worker writing down what it was started with before it checks its range.
_AUDIT_VERIFY_RECORDING_WORKERS = """
import json, os, resource, sys
from pathlib import Path
import nhidel.audit.parallel as parallel
from nhidel import hardening

out = Path(sys.argv[1])
parallel.MIN_PARALLEL_BYTES = 1
parallel._CHUNK_BYTES = 1024  # several ranges, so several workers
os.cpu_count = lambda: 4  # the fast path runs on a one-core runner too
check = parallel.check_range

def check_range(job):
    (out / str(os.getpid())).write_text(json.dumps({
        "parent": os.getppid(),
        "environ": Path("/proc/self/environ").read_bytes().decode("utf-8", "replace"),
        "variables": sorted(os.environ),
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "dumpable": hardening.is_dumpable(),
    }))
    return check(job)

check_range.__module__, check_range.__qualname__ = parallel.__name__, "check_range"
parallel.check_range = check_range
if sys.argv[2] == "cli":
    sys.argv = ["nhidel", "audit", "verify"]
    from nhidel.cli import run
    run()
else:  # the Python API, its keystore opened from a mapping: os.environ keeps the variable
    from nhidel.actions.audit_log import verify_log
    from nhidel.paths import Paths
    from nhidel.keys.keystore import open_keystore
    paths = Paths.from_env()
    given = {"NHIDEL_KEYSTORE": "file", "NHIDEL_PASSPHRASE": os.environ["NHIDEL_PASSPHRASE"]}
    assert verify_log(paths, open_keystore(paths, env=given)).problem is None
    assert os.environ["NHIDEL_PASSPHRASE"] == given["NHIDEL_PASSPHRASE"]  # the host's, back
"""


@pytest.mark.parametrize("caller", ["cli", "api"])
def test_audit_verify_workers_inherit_no_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caller: str
) -> None:
    """The CLI took the variable out when it read the passphrase; the Python API may not
    have (its keystore read from a mapping), and the workers are started without it anyway."""
    from helpers.support import Cli

    monkeypatch.setitem(keystore._SCRYPT, "n", 2**14)
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    monkeypatch.setenv("NHIDEL_KEYSTORE", "file")
    monkeypatch.setenv("NHIDEL_PASSPHRASE_FILE", str(secret))
    cli = Cli()
    cli.ok("init", "--principal", "alice")
    cli.ok("agent", "add", "reviewer", "--allow", "repo:read:acme/*", "--max-ttl", "1h")
    for _ in range(8):
        cli.ok("grant", "reviewer", "--scope", "repo:read:acme/api", "--ttl", "5m")

    seen = tmp_path / "workers"
    seen.mkdir()
    env = isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE=PASSPHRASE)
    done = subprocess.run(
        [sys.executable, "-c", _AUDIT_VERIFY_RECORDING_WORKERS, str(seen), caller],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    workers = [json.loads(path.read_text()) for path in seen.iterdir()]
    assert len(workers) >= 2, "the parallel check did not run"
    for worker in workers:
        assert worker["parent"] != os.getpid()  # forked by `nhidel audit verify`, not by us
        assert PASSPHRASE not in worker["environ"]
        assert not {"NHIDEL_PASSPHRASE", "NHIDEL_PASSPHRASE_FILE"} & set(worker["variables"])
        assert worker["core"] == [0, 0] and worker["dumpable"] is False
