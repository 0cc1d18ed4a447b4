"""Generated docs: no drift from the code, a man page that lints clean, output that fits people."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import Cli

from nhidel.cli import gendocs

ROOT = Path(__file__).resolve().parents[1]
MAN_PAGE = ROOT / "man" / "nhidel.1"


def test_generated_files_match_what_the_code_generates(capsys: pytest.CaptureFixture[str]) -> None:
    status = gendocs.main(["--check", "--root", str(ROOT)])
    assert status == 0, capsys.readouterr().err


def test_the_drift_check_names_a_file_that_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("README.md", "man", "completions", "nhidel"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    (tmp_path / "completions" / "nhidel.fish").write_text("# edited by hand\n")
    assert gendocs.main(["--check", "--root", str(tmp_path)]) == 1
    assert "completions/nhidel.fish" in capsys.readouterr().err
    assert gendocs.main(["--write", "--root", str(tmp_path)]) == 0
    assert gendocs.main(["--check", "--root", str(tmp_path)]) == 0


def test_man_page_renders_without_a_warning() -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed (tests/run.sh installs it with apt-get as root)")
    result = subprocess.run([groff, "-man", "-ww", "-z", str(MAN_PAGE)], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    man = shutil.which("man")
    if man is not None:
        rendered = subprocess.run(
            [man, "--warnings", "-l", str(MAN_PAGE)], capture_output=True, text=True,
            timeout=60, check=False, env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat"},
        )  # fmt: skip
        assert rendered.returncode == 0 and rendered.stderr == ""
        assert "EXIT STATUS" in rendered.stdout


def test_man_page_documents_every_command_option_and_section() -> None:
    page = MAN_PAGE.read_text()
    for path, command, ctx in gendocs.command_tree():
        if path and not getattr(command, "commands", None):
            assert f'.SS "nhidel {path}"' in page
        for param in command.get_params(ctx):
            for name in param.opts if param.param_type_name == "option" else []:
                assert "\\fB" + name.replace("-", "\\-") + "\\fR" in page, (path, name)
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "ENVIRONMENT", "FILES",
                    "EXIT STATUS", "EXAMPLES", "SECURITY"):  # fmt: skip
        assert f".SH {section}\n" in page
    for variable in ("NHIDEL_HOME", "NHIDEL_KEYSTORE", "NHIDEL_PASSPHRASE_FILE", "NO_COLOR"):
        assert f"\\fB{variable}\\fR" in page


def test_readme_help_blocks_are_present() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- help:(nhidel [a-z ]+) -->", readme)
    assert blocks == ["nhidel grant", "nhidel verify"]


# -- people at a terminal -----------------------------------------------------------------


def test_list_fits_80_columns_with_long_scopes(ready: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    long_scopes = [f"repo:read:acme/{'very-long-repository-name-' * 2}{n}" for n in range(3)]
    ready.ok("grant", "reviewer", *[arg for s in long_scopes for arg in ("--scope", s)])
    header, *rows = ready.ok("list").stdout.splitlines()
    assert max(len(line) for line in [header, *rows]) <= 80
    start, end = header.index("SCOPES"), header.index("EXPIRES")
    column = "".join(row[start:end].strip() for row in rows)
    assert column == "".join(long_scopes)  # folded onto more lines, never cut


def test_output_to_a_non_terminal_has_no_colour_or_escapes(
    ready: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    ready.ok("grant", "reviewer", "--scope", "repo:read:acme/api")
    for args in (("list",), ("agent", "list"), ("list", "--all")):
        assert "\x1b" not in ready.ok(*args).stdout
