"""Test helpers shared by many test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from keyring.backend import KeyringBackend
from typer.testing import CliRunner

from nhidel.cli.app import build_app


class MemoryKeyring(KeyringBackend):
    """A fake OS keyring for unit and CLI tests (keyring's own tests use the same idea)."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.entries.pop((service, username), None)


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


class _TerminalInput(io.TextIOWrapper):
    """Standard input that says it is a terminal: what a person at a prompt types."""

    def isatty(self) -> bool:
        return True


class _TerminalRunner(CliRunner):
    """Typer's runner with stdin a terminal (the input still comes from `input`)."""

    @contextlib.contextmanager
    def isolation(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with super().isolation(*args, **kwargs) as streams:
            sys.stdin = _TerminalInput(sys.stdin.buffer, encoding="utf-8")
            yield streams


class Cli:
    """Runs nhidel in-process through Typer's runner, stdout and stderr kept apart; with
    `terminal=True` stdin is a terminal, so a command that asks first reads `input` as the
    answers."""

    def __init__(self) -> None:
        self.runner = CliRunner()
        self.terminal_runner = _TerminalRunner()

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        terminal: bool = False,
    ) -> Result:
        runner = self.terminal_runner if terminal else self.runner
        result = runner.invoke(build_app(list(args)), list(args), input=input, env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result
