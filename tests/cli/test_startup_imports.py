"""A lean start-up: each command loads its own module only, and nothing it does not use.

These tests check what is imported, never how long anything takes (figures belong in
benchmarks/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.support import Cli

from nhidel.cli.app import COMMAND_MODULES, command
from nhidel.cli.typer_seam import converter_for

# Imported by a command, these would cost tens of milliseconds and serve nothing it does.
NEVER = ("pydantic", "jwt", "keyring", "rich", "asyncio", "aiohttp")

PROBE = """
import json, sys
from nhidel.cli import main
status = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps({"status": status, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def run_probe(home: Path, *args: str, stdin: str = "") -> tuple[int, set[str], str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NHIDEL_", "DBUS_", "PYTHON_KEYRING"))
    }
    env.update(NHIDEL_HOME=str(home), NHIDEL_KEYSTORE="file", NHIDEL_PASSPHRASE="start-up test")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    return report["status"], set(report["modules"]), result.stdout


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("startup") / "home"
    for args in (
        ("init", "--principal", "alice"),
        ("agent", "add", "bot", "--allow", "a:b", "--max-ttl", "1h"),
        ("grant", "bot", "--scope", "a:b"),  # something to list, whichever test runs first
    ):
        status, _, _ = run_probe(home, *args)
        assert status == 0
    return home


def loaded(modules: set[str], top: str) -> list[str]:
    return sorted(m for m in modules if m == top or m.startswith(top + "."))


def test_grant_verify_and_list_import_nothing_they_do_not_use(home: Path) -> None:
    status, modules, token = run_probe(home, "grant", "bot", "--scope", "a:b")
    assert status == 0 and token.count(".") == 2
    runs = {"grant": modules}
    runs["verify"] = run_probe(home, "verify", "-", "--scope", "a:b", stdin=token)[1]
    runs["list"] = run_probe(home, "list", "--json")[1]
    for name, imported in runs.items():
        for heavy in NEVER:
            assert not loaded(imported, heavy), (name, heavy)
        others = {f"nhidel.cli.{m}" for m in COMMAND_MODULES.values()} - {
            f"nhidel.cli.{COMMAND_MODULES[name]}"
        }
        assert not others & imported, (name, sorted(others & imported))


def test_list_without_a_keystore_reads_no_crypto(home: Path) -> None:
    status, modules, out = run_probe(home, "list", "--json")
    assert status == 0 and json.loads(out)
    assert not loaded(modules, "cryptography")
    assert not {"nhidel.keys.keystore", "secrets"} & modules


def test_every_command_is_in_the_lazy_table() -> None:
    assert set(command().commands) == set(COMMAND_MODULES)
    for name, module in COMMAND_MODULES.items():
        assert name in command([name]).commands
        assert set(command([name]).commands) == {
            n for n, m in COMMAND_MODULES.items() if m == module
        }


def test_help_and_unknown_commands_still_see_every_command(cli: Cli) -> None:
    listed = cli("--help").stdout
    assert all(name in listed for name in COMMAND_MODULES)
    result = cli("--debug", "gr4nt")
    assert result.exit_code == 2 and "gr4nt" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("grant", "bot", "--scope", "a:b", "--uses", "abc"), "'abc' is not a whole number"),
        (("grant", "bot", "--scope", "a:b", "--uses", "1.5"), "'1.5' is not a whole number"),
        (
            ("grant", "bot", "--scope", "a:b", "--format", "xml"),
            "'xml' is not one of 'token', 'json', 'env'",
        ),
        (("audit", "tail", "-n", "ten"), "'ten' is not a whole number"),
        (("config", "set", "colour", "x"), "'colour' is not one of 'status-uri', 'status-dir'"),
    ],
)
def test_bad_values_are_one_line_usage_errors(
    cli: Cli, args: tuple[str, ...], message: str
) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    first, hint = result.stderr.splitlines()
    assert message in first and first.startswith("error: ")
    assert hint.startswith("hint: ")


def test_plain_converters_cover_every_parameter_nhidel_has() -> None:
    """A new parameter type would silently bring pydantic back: it must get a converter."""

    def parameters(cmd: object) -> list[object]:
        found = list(getattr(cmd, "params", []))
        for sub in getattr(cmd, "commands", {}).values():
            found += parameters(sub)
        return found

    for param in parameters(command()):
        annotation = param.type_descriptor.annotation  # type: ignore[attr-defined]
        assert converter_for(annotation) is not None, (param, annotation)


def test_negative_and_signed_whole_numbers_convert() -> None:
    convert = converter_for(int)
    assert convert is not None
    assert (convert("7"), convert("-3"), convert("+2"), convert(5)) == (7, -3, 2, 5)
    for bad in ("", "٣", "0x10", "1e3", " "):
        with pytest.raises(ValueError, match="whole number"):
            convert(bad)


def test_flags_read_text_as_click_does() -> None:
    convert = converter_for(bool)
    assert convert is not None
    assert [convert(v) for v in (True, "yes", "On", "1", False, "no", "0", "off")] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="true or false"):
        convert("maybe")
