"""`grant --format export` (for eval, beside the dotenv `env`)."""

from __future__ import annotations

import subprocess

from helpers.support import Cli

SCOPE = "repo:read:acme/api"


def in_bash(script: str, text: str) -> str:
    done = subprocess.run(["bash", "-c", script, "bash", text], capture_output=True, text=True,
                          timeout=30, check=True)  # fmt: skip
    return done.stdout


# -- --format export and env -----------------------------------------------------------------


def test_format_export_prints_a_quoted_export_that_eval_hands_to_children(ready: Cli) -> None:
    out = ready.ok("grant", "reviewer", "--scope", SCOPE, "--format", "export").stdout
    token = out.removeprefix("export NHIDEL_TOKEN='").removesuffix("'\n")
    assert out == f"export NHIDEL_TOKEN='{token}'\n" and token.count(".") == 2
    assert in_bash('eval "$1"; sh -c \'printf %s "$NHIDEL_TOKEN"\'', out) == token


def test_format_env_stays_a_dotenv_line_that_eval_does_not_export(ready: Cli) -> None:
    out = ready.ok("grant", "reviewer", "--scope", SCOPE, "--format", "env").stdout
    assert out.startswith("NHIDEL_TOKEN=ey") and "'" not in out and out.count("\n") == 1
    unexported = 'eval "$1"; sh -c \'printf %s "${NHIDEL_TOKEN-unset}"\''
    assert in_bash(unexported, out) == "unset"


def test_the_format_help_says_which_is_dotenv_and_which_is_for_eval(cli: Cli) -> None:
    text = " ".join(cli.ok("grant", "--help").stdout.replace("│", " ").split())
    assert "env (NHIDEL_TOKEN=TOKEN: a dotenv line, which eval sets but does not export)" in text
    assert "export (export NHIDEL_TOKEN='TOKEN': for eval)" in text
