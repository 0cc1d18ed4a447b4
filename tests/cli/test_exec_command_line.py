"""`nhidel exec` on the command line, in-process: its help, its completion, and that its own
failures are 125 whatever status the same failure has elsewhere."""

from __future__ import annotations

import time

from helpers.support import Cli

from nhidel.cli import complete


def test_exec_help_says_where_the_command_begins_and_what_125_126_127_mean(cli: Cli) -> None:
    result = cli("exec", "--help")
    assert result.exit_code == 0
    assert "nhidel exec [OPTIONS] AGENT CMD [ARGS]..." in result.stdout
    for status in ("125", "126", "127"):
        assert status in result.stdout


def test_a_usage_error_of_exec_is_125_where_grant_says_2(ready: Cli) -> None:
    assert ready("grant", "reviewer", "--scope", "repo:read:acme/api", "--uses", "x").exit_code == 2
    result = ready("exec", "reviewer", "--scope", "repo:read:acme/api", "--uses", "x", "--", "true")
    assert result.exit_code == 125
    assert result.stderr.startswith("error: ")


def test_exec_completes_the_agent_then_its_scopes_and_leaves_the_command_alone(
    ready: Cli,
) -> None:
    now = int(time.time())
    assert [v for v, _ in complete.candidates(["exec", ""], now=now)] == ["reviewer"]
    scopes = [v for v, _ in complete.candidates(["exec", "reviewer", "--scope", ""], now=now)]
    assert "repo:read:acme/" in scopes
    assert (
        complete.candidates(["exec", "reviewer", "--scope", "repo:read:acme/x", ""], now=now) == []
    )
