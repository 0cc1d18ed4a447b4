"""`secret add/list/remove`, `mcp add/list/remove`, `route add/list/remove`: where secrets may
go, sealed with the ceilings (SPEC "Sealed configuration", issue 17 items 1 and 2).

A value is read from stdin or a no-echo prompt, kept in the keystore alone, and never shown;
each registration is a sealed state change; an edited entry is refused, naming it, and nothing
that would use it proceeds.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from helpers.support import Cli, MemoryKeyring

from nhidel.actions.secrets import secret_values
from nhidel.enforce.context import Enforcer
from nhidel.errors import IntegrityError
from nhidel.keys.keystore import open_keystore
from nhidel.paths import Paths

VALUE = "ghp_0123456789abcdefSECRET"
ECHO = shutil.which("echo") or "/bin/echo"


def tail(cli: Cli) -> list[dict[str, Any]]:
    out = cli.ok("audit", "tail", "-n", "50", "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def everything_written(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


@pytest.fixture
def stored(ready: Cli) -> Cli:
    ready.ok("secret", "add", "gh", input=VALUE + "\n")
    return ready


def test_a_secret_is_read_from_stdin_kept_in_the_keystore_and_never_written_or_shown(
    stored: Cli, nhidel_home: Path, memory_keyring: MemoryKeyring, paths: Paths
) -> None:
    listed = json.loads(stored.ok("secret", "list", "--json").stdout)
    assert [s["name"] for s in listed] == ["gh"]
    assert listed[0]["last_used"] is None and listed[0]["used_by"] == []
    assert secret_values(open_keystore(paths), ["gh"]) == {"gh": VALUE}
    assert VALUE.encode() not in everything_written(nhidel_home)
    plain = stored.ok("secret", "list")
    assert VALUE not in plain.stdout + plain.stderr
    assert "gh" in plain.stdout
    added = [r for r in tail(stored) if r["event"] == "secret.added"]
    assert [(r["secret"], r["replaced"]) for r in added] == [("gh", False)]
    assert VALUE not in json.dumps(tail(stored))


def test_adding_a_name_twice_needs_replace_and_replacing_is_seen_at_once(
    stored: Cli, paths: Paths
) -> None:
    again = stored("secret", "add", "gh", input="another-value-123\n")
    assert again.exit_code == 6 and "--replace" in again.stderr
    assert secret_values(open_keystore(paths), ["gh"]) == {"gh": VALUE}
    stored.ok("secret", "add", "gh", "--replace", input="another-value-123\n")
    assert secret_values(open_keystore(paths), ["gh"]) == {"gh": "another-value-123"}


@pytest.mark.parametrize(
    ("given", "why"),
    [("", "empty"), ("short", "shorter than 8"), ("two\nlines-here", "line break"),
     ("tab\there-is-it", "control")],
)  # fmt: skip
def test_a_bad_value_is_refused_and_nothing_is_stored(ready: Cli, given: str, why: str) -> None:
    result = ready("secret", "add", "gh", input=given)
    assert result.exit_code == 2 and why in result.stderr
    assert json.loads(ready.ok("secret", "list", "--json").stdout) == []


def test_a_secret_value_is_never_an_argument(ready: Cli) -> None:
    result = ready("secret", "add", "gh", VALUE)
    assert result.exit_code == 2
    assert json.loads(ready.ok("secret", "list", "--json").stdout) == []


def test_a_secret_in_use_cannot_be_removed_until_its_registrations_are(stored: Cli) -> None:
    stored.ok("route", "add", "github", "https://api.github.com", "--secret", "gh")
    refused = stored("secret", "remove", "gh")
    assert refused.exit_code == 6 and "route github" in refused.stderr
    stored.ok("route", "remove", "github")
    stored.ok("secret", "remove", "gh")
    assert json.loads(stored.ok("secret", "list", "--json").stdout) == []
    assert stored("secret", "remove", "gh").exit_code == 3


def test_mcp_add_resolves_the_executable_and_lists_names_never_values(stored: Cli) -> None:
    stored.ok(
        "mcp", "add", "files", "--secret", "gh=GITHUB_TOKEN", "--resource-arg",
        "read_file=path", "--resource-arg", "move_file=source", "--resource-arg",
        "move_file=destination", "--root", "/srv/data", "--env", "MODE=ro", "--agent",
        "reviewer", "--", "echo", "-n", "hello",
    )  # fmt: skip
    (server,) = json.loads(stored.ok("mcp", "list", "--json").stdout)
    assert server["command"] == [ECHO, "-n", "hello"]
    assert server["secrets"] == {"GITHUB_TOKEN": "gh"}
    assert server["resource_args"] == {
        "move_file": ["source", "destination"],
        "read_file": ["path"],
    }
    assert (server["roots"], server["env"], server["agents"]) == (
        ["/srv/data"], {"MODE": "ro"}, ["reviewer"]
    )  # fmt: skip
    assert VALUE not in stored.ok("mcp", "list").stdout
    used = json.loads(stored.ok("secret", "list", "--json").stdout)[0]["used_by"]
    assert used == ["MCP server files"]
    assert [r["server"] for r in tail(stored) if r["event"] == "mcp.added"] == ["files"]


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--secret", "nope=X", "--", "echo"], "no secret named 'nope'"),
        (["--secret", "gh=DBUS_SESSION_BUS_ADDRESS", "--", "echo"], "keystore"),
        (["--env", "NHIDEL_PASSPHRASE=x", "--", "echo"], "keystore"),
        (["--secret", "gh", "--", "echo"], "NAME=ENV"),
        (["--agent", "ghost", "--", "echo"], "no agent named 'ghost'"),
        (["--root", "relative/dir", "--", "echo"], "absolute"),
        (["--", "no-such-program-anywhere"], "not an executable"),
        (["--resource-arg", "read file=path", "--", "echo"], "--resource-arg"),
    ],
)
def test_a_bad_registration_is_refused_and_nothing_is_registered(
    stored: Cli, args: list[str], why: str
) -> None:
    result = stored("mcp", "add", "files", *args)
    assert result.exit_code in (2, 3) and why in result.stderr, result.stderr
    assert json.loads(stored.ok("mcp", "list", "--json").stdout) == []


def test_route_add_seals_the_ca_by_its_contents(
    stored: Cli, tmp_path: Path, nhidel_home: Path, paths: Paths
) -> None:
    from helpers.certificates import make_ca

    ca = make_ca(tmp_path)
    stored.ok(
        "route", "add", "api", "https://127.0.0.1:8443/v1/", "--secret", "gh", "--header",
        "X-Api-Key", "--format", "{secret}", "--ca-file", str(ca), "--url-var", "API_URL",
    )  # fmt: skip
    (route,) = json.loads(stored.ok("route", "list", "--json").stdout)
    assert route["url"] == "https://127.0.0.1:8443/v1"
    assert (route["header"], route["format"], route["ca"]) == ("X-Api-Key", "{secret}", True)
    ca.unlink()  # the path is not what is trusted: its contents were sealed
    with Enforcer(paths, open_keystore(paths)) as enforcer:
        assert "BEGIN CERTIFICATE" in (enforcer.config().routes["api"].ca_pem or "")


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["http://api.example.com"], "plain http"),
        (["https://user:pw@api.example.com"], "user name"),
        (["https://api.example.com/a/../b"], "'..'"),
        (["https://api.example.com?x=1"], "query"),
        (["https://api.example.com", "--header", "Host"], "the broker owns"),
        (["https://api.example.com", "--format", "Bearer"], "{secret}"),
    ],
)
def test_a_bad_route_is_refused(stored: Cli, args: list[str], why: str) -> None:
    result = stored("route", "add", "api", *args, "--secret", "gh")
    assert result.exit_code == 2 and why in result.stderr, result.stderr


@pytest.mark.parametrize("name", ["mcp", "healthz", "requests"])
def test_route_add_refuses_the_names_of_the_daemons_own_paths(stored: Cli, name: str) -> None:
    result = stored("route", "add", name, "https://api.example.com", "--secret", "gh")
    assert result.exit_code == 2 and f"route name {name!r} is reserved" in result.stderr
    assert "hint: choose another name" in result.stderr
    assert json.loads(stored.ok("route", "list", "--json").stdout) == []


def _edit(home: Path, change: Any) -> None:
    path = home / "config.toml"
    document = tomllib.loads(path.read_text())
    change(document)
    path.write_text(tomli_w.dumps(document))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d["routes"]["api"].update(url="https://evil.example.com"), "route 'api'"),
        (lambda d: d["routes"]["api"].update(secret="other"), "route 'api'"),
        (lambda d: d["mcp"]["files"].update(command=["/bin/sh", "-c", "env"]),
         "MCP server 'files'"),
        (lambda d: d["mcp"]["files"]["secrets"].update(OTHER="gh"), "MCP server 'files'"),
        (lambda d: d["mcp"]["files"].update(env={"LD_PRELOAD": "/tmp/x.so"}),
         "MCP server 'files'"),
        (lambda d: d["mcp"]["files"].update(resource_args={}), "MCP server 'files'"),
        (lambda d: d["mcp"].update(evil={"command": ["/bin/sh"], "secrets": {"T": "gh"},
                                         "created_at": "2026-01-01T00:00:00Z"}),
         "MCP server 'evil'"),
        (lambda d: d.pop("secrets"), "secret 'gh'"),
    ],
)  # fmt: skip
def test_an_edited_registration_is_refused_by_the_enforcement_point_and_by_writers(
    stored: Cli, nhidel_home: Path, paths: Paths, change: Any, named: str
) -> None:
    stored.ok("mcp", "add", "files", "--secret", "gh=TOKEN", "--resource-arg", "read=path",
              "--", "echo")  # fmt: skip
    stored.ok("route", "add", "api", "https://api.example.com", "--secret", "gh")
    enforcer = Enforcer(paths, open_keystore(paths))  # running before the edit, as a daemon
    try:
        assert sorted(enforcer.config().servers) == ["files"]
        _edit(nhidel_home, change)
        with pytest.raises(IntegrityError) as refused:
            enforcer.config()
        assert named in refused.value.message
        with pytest.raises(IntegrityError), Enforcer(paths, open_keystore(paths)) as fresh:
            fresh.config()
    finally:
        enforcer.close()
    # A legitimate writer refuses too: it never seals the edit into the state.
    written = stored("secret", "add", "another", input="another-secret-value\n")
    assert written.exit_code == 5 and named in written.stderr
    assert stored("audit", "verify").exit_code == 5


def test_a_running_enforcement_point_sees_a_removal_and_a_replaced_value_at_once(
    stored: Cli, paths: Paths
) -> None:
    stored.ok("mcp", "add", "files", "--secret", "gh=TOKEN", "--", "echo")
    with Enforcer(paths, open_keystore(paths)) as enforcer:
        assert enforcer.secrets(["gh"]) == {"gh": VALUE}
        stored.ok("secret", "add", "gh", "--replace", input="the-new-value-456\n")
        assert enforcer.secrets(["gh"]) == {"gh": "the-new-value-456"}
        stored.ok("mcp", "remove", "files")
        assert enforcer.config().servers == {}
    (listed,) = json.loads(stored.ok("secret", "list", "--json").stdout)
    assert listed["last_used"] is not None


def test_registrations_are_read_without_the_keystore(
    stored: Cli, memory_keyring: MemoryKeyring
) -> None:
    stored.ok("route", "add", "api", "https://api.example.com", "--secret", "gh")
    memory_keyring.entries.clear()  # nothing to unlock: listing still works
    assert [r["name"] for r in json.loads(stored.ok("route", "list", "--json").stdout)] == ["api"]
    assert stored("route", "remove", "api").exit_code == 4  # changing needs it
