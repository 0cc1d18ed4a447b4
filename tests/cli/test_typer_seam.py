"""The one seam to Typer: each patch takes, help and man page name things alike, and the option
parser speaks nhidel's `error:`/`hint:`.

A Typer release that moves what `nhidel/cli/typer_seam.py` patches leaves nhidel working with
Typer's own behaviour; these tests are what notice it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import processes
from helpers.support import Cli

from nhidel.cli import shell_scripts, typer_seam
from nhidel.cli.app import build_app
from tools.command_tree import command_tree, params
from tools.manpage import man_page

ROOT = Path(__file__).resolve().parents[2]


def _is_nhidels(owner: Any, name: str) -> bool:
    return bool(getattr(getattr(owner, name), "_nhidel", False))


def test_every_patch_takes_where_typer_keeps_what_it_patches() -> None:
    build_app(None)  # the full app: all three patches
    from typer import _completion_classes, _completion_shared
    from typer.core import TyperArgument, TyperOption, _TyperParameter

    assert _is_nhidels(_TyperParameter, "get_runtime_param")
    assert _is_nhidels(TyperOption, "display_type_rich")
    assert _is_nhidels(TyperArgument, "display_type_rich")
    assert _is_nhidels(TyperArgument, "_usage_display_name")
    assert _is_nhidels(_completion_shared, "install_bash")
    assert _is_nhidels(_completion_shared, "install_zsh")
    for shell, cls in (("bash", "BashComplete"), ("zsh", "ZshComplete"), ("fish", "FishComplete")):
        ours = shell_scripts.script(shell).replace("%", "%%")
        assert _completion_shared._completion_scripts[shell] == ours
        assert getattr(_completion_classes, cls).source_template == ours


@pytest.mark.parametrize(
    ("before", "kept"),
    [
        ("", False),  # Typer would add the global style: taken out again
        ("setopt autocd\n", False),
        (f"{typer_seam.GLOBAL_ZSH_STYLE}\n", True),  # the user's own: left alone
    ],
)
def test_installing_for_zsh_sets_no_completion_style_beyond_nhidels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: str, kept: bool
) -> None:
    build_app(None)
    from typer import _completion_shared

    monkeypatch.setenv("HOME", str(tmp_path))
    zshrc = tmp_path / ".zshrc"
    if before:
        zshrc.write_text(before)
    installed = _completion_shared.install_zsh(  # noqa: S604 - `shell` names zsh, runs nothing
        prog_name="nhidel", complete_var="_NHIDEL_COMPLETE", shell="zsh"
    )
    text = zshrc.read_text()
    assert (typer_seam.GLOBAL_ZSH_STYLE in text) is kept, text
    assert "zstyle" not in text.replace(typer_seam.GLOBAL_ZSH_STYLE, "") and before in text
    assert "compinit" in text  # what loads nhidel's completion stays
    assert installed.read_text() == shell_scripts.script("zsh")


def test_installing_twice_patches_once() -> None:
    from typer.core import _TyperParameter

    typer_seam.install()
    first = _TyperParameter.get_runtime_param
    typer_seam.install()
    assert _TyperParameter.get_runtime_param is first


def _typer_modules_imported(path: Path) -> list[str]:
    """The typer modules `path` imports (`typer.core:_` when it takes a private name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            private = any(alias.name.startswith("_") for alias in node.names)
            found.append(node.module + (":_" if private else ""))
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [module for module in found if module.split(".")[0] == "typer"]


def test_only_the_seam_reaches_into_typers_private_api() -> None:
    sources = sorted([*(ROOT / "nhidel").rglob("*.py"), *(ROOT / "tools").rglob("*.py")])
    reaching = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sources
        for module in _typer_modules_imported(path)
        if "_" in module.removeprefix("typer")
    ]
    assert reaching and all(line.startswith("nhidel/cli/typer_seam.py") for line in reaching), (
        reaching
    )


def _help(cli: Cli, *command: str) -> str:
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        (("grant",), "Usage: nhidel grant [OPTIONS] [AGENT]"),
        (("revoke",), "Usage: nhidel revoke [OPTIONS] [ID]..."),
        (("verify",), "Usage: nhidel verify [OPTIONS] [TOKEN]"),
        (("config", "set"), "Usage: nhidel config set [OPTIONS] NAME VALUE"),
        (("agent", "add"), "Usage: nhidel agent add [OPTIONS] NAME"),
    ],
)
def test_usage_lines_name_arguments_as_man_pages_do(
    cli: Cli, command: tuple[str, ...], usage: str
) -> None:
    assert usage in _help(cli, *command)


def test_options_show_what_their_value_is_and_flags_show_nothing(cli: Cli) -> None:
    text = _help(cli, "grant")
    for option, value in (("--ttl", "DURATION"), ("--scope", "SCOPE"), ("--uses", "COUNT"),
                          ("--not-before", "TIME"), ("--like", "ID"),
                          ("--format", "token|json|env|export")):  # fmt: skip
        assert re.search(rf"{re.escape(option)}\s+{re.escape(value)}\s", text), (option, text)
    assert re.search(r"--help\s+-h\s+Show this message", text), text


def test_no_help_shows_a_python_type(cli: Cli) -> None:
    python_types = re.compile(r"<(str|int|bool|path|list\[[^\]]*\]|[a-z|]+)>")
    for path, _command, _ in command_tree():
        text = _help(cli, *path.split()) if path else cli("--help").stdout
        assert not python_types.search(text), (path, python_types.search(text))
        assert "{" not in text.split("Usage:", 1)[1].splitlines()[0], (path, text)


def test_every_valued_option_says_what_its_value_is_where_it_is_declared() -> None:
    for path, command, ctx in command_tree():
        arguments, options = params(command, ctx)
        for option in options:
            value = typer_seam.option_value_name(option)
            if option.is_flag:
                assert value is None, (path, option.opts)
            else:
                assert value and (option.metavar or "|" in value), (path, option.opts)
                assert value == value.upper() or "|" in value, (path, option.opts, value)
        for argument in arguments:
            assert argument.metavar and argument.metavar.isupper(), (path, argument.name)


def test_the_man_page_names_options_and_arguments_as_the_help_does(cli: Cli) -> None:
    page = man_page((ROOT / "README.md").read_text("utf-8"))
    for path, command, ctx in command_tree():
        if not path:
            continue
        arguments, options = params(command, ctx)
        usage = _help(cli, *path.split()).split("Usage: ", 1)[1].splitlines()[0].strip()
        for argument in arguments:
            shown = typer_seam.argument_usage(argument)
            assert usage.endswith(shown) or f" {shown} " in usage, (path, shown, usage)
            assert f"\\fI{shown}\\fR" in page, (path, shown)
        for option in options:
            value = typer_seam.option_value_name(option)
            if value is not None:
                long_name = max(option.opts, key=len).replace("-", "\\-")
                assert f"\\fB{long_name}\\fR \\fI{value}\\fR" in page, (path, long_name)


@pytest.mark.parametrize(
    ("args", "error", "hint"),
    [
        (("grant",), "error: missing argument 'AGENT'", "hint: see nhidel grant --help"),
        (("grant", "reviewer"), "error: missing option '--scope'", "hint: see nhidel grant --help"),
        (
            ("grant", "reviewer", "--scope", "repo:read:acme/x", "--use", "2"),
            "error: no such option: --use",
            "hint: did you mean --uses? see nhidel grant --help",
        ),
        (
            ("grant", "reviewer", "--scope", "repo:read:acme/x", "--uses", "two"),
            "error: invalid value for '--uses': 'two' is not a whole number",
            "hint: see nhidel grant --help",
        ),
        (
            ("list", "extra"),
            "error: got unexpected extra argument(s) (extra)",
            "hint: see nhidel list --help",
        ),  # fmt: skip
        (
            ("grant", "reviewer", "--ttl"),
            "error: option '--ttl' requires an argument",
            "hint: see nhidel grant --help",
        ),  # fmt: skip
        (
            ("lsit",),
            "error: no such command 'lsit'",
            "hint: did you mean 'list'? see nhidel --help",
        ),
        (
            ("key", "shwo"),
            "error: no such command 'shwo'",
            "hint: did you mean 'show'? see nhidel key --help",
        ),  # fmt: skip
    ],
)
def test_option_parser_errors_speak_nhidels_error_and_hint(
    ready: Cli, args: tuple[str, ...], error: str, hint: str
) -> None:
    result = ready(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [error, hint]


@pytest.mark.parametrize(
    ("annotation", "text", "value"),
    [
        (str, "x", "x"),
        (int, "42", 42),
        (int, "-3", -3),
        (bool, "off", False),
        (Path, "a/b", Path("a/b")),
    ],
)
def test_plain_converters_convert_like_typer(annotation: Any, text: str, value: Any) -> None:
    convert = typer_seam.converter_for(annotation)
    assert convert is not None and convert(text) == value


@pytest.mark.parametrize(("annotation", "text"), [(int, "4.2"), (int, "٤"), (bool, "maybe")])
def test_plain_converters_refuse_what_typer_refuses(annotation: Any, text: str) -> None:
    convert = typer_seam.converter_for(annotation)
    assert convert is not None
    with pytest.raises(ValueError, match="is not"):
        convert(text)


MOVED = """
import sys
import typer._coercion
del typer._coercion.RuntimeParam  # as if a Typer release had moved it
from nhidel.cli import main
status = main(sys.argv[1:])
print("pydantic" in sys.modules, file=sys.stderr)
sys.exit(status)
"""


def test_a_typer_that_moved_what_the_seam_patches_still_runs_nhidel(tmp_path: Path) -> None:
    env = processes.isolated_env(tmp_path, NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE="p4ss-w0rd")
    processes.ok(env, "init", "--principal", "alice")
    processes.ok(env, "agent", "add", "bot", "--allow", "a:b", "--max-ttl", "1h")
    result = subprocess.run(
        [sys.executable, "-c", MOVED, "grant", "bot", "--scope", "a:b", "--uses", "2"],
        env=env, cwd=env["HOME"], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".") == 2  # a token
    assert result.stderr.splitlines()[-1] == "True"  # Typer's own conversion did the work
