"""Generated docs: no drift from the code, a man page that lints clean, output that fits people."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.support import Cli

from tools import gendocs

ROOT = Path(__file__).resolve().parents[2]
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
        reason = "groff is not installed (tests/run.sh installs it with apt-get as root)"
        if os.environ.get("NHIDEL_REQUIRE_SHELLS") == "1":  # set by tests/run.sh in CI
            pytest.fail(f"{reason}; NHIDEL_REQUIRE_SHELLS=1 forbids skipping")
        pytest.skip(reason)
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


def option_entries(page: str) -> dict[str, str]:
    """Each `.TP` entry's label line and the text after it, in the COMMANDS section."""
    commands = page.split(".SH COMMANDS\n", 1)[1].split(".SH ENVIRONMENT", 1)[0]
    entries = {}
    for section in commands.split('.SS "')[1:]:
        path = section.split('"', 1)[0]
        for entry in section.split(".TP\n")[1:]:
            label, _, text = entry.partition("\n")
            entries[f"{path} {label}"] = text.split("\n.")[0].strip()
    return entries


def test_man_page_says_which_options_are_required_and_their_defaults() -> None:
    entries = option_entries(MAN_PAGE.read_text())
    assert entries["nhidel agent add \\fB\\-\\-allow\\fR \\fISCOPE\\fR"].endswith(" Required.")
    assert entries["nhidel grant \\fB\\-\\-format\\fR \\fItoken|json|env|export\\fR"].endswith(
        " Default: token."
    )
    assert entries["nhidel audit tail \\fB\\-n\\fR, \\fB\\-\\-lines\\fR \\fICOUNT\\fR"].endswith(
        " Default: 10."
    )
    required = sum(text.endswith(" Required.") for text in entries.values())
    assert required == sum(
        1
        for path, command, ctx in gendocs.command_tree()
        if path and not getattr(command, "commands", None)
        for param in command.get_params(ctx)
        if param.param_type_name == "option" and param.required
    )


def test_man_page_text_escapes_every_hyphen_and_has_a_fixed_date() -> None:
    page = MAN_PAGE.read_text()
    text_lines = [line for line in page.splitlines() if not line.startswith((".", "'"))]
    bare = [line for line in text_lines if re.search(r"(?<!\\)-", line)]
    assert bare == []
    assert re.match(r'\.TH NHIDEL 1 "\d{4}-\d{2}-\d{2}" "nhidel ', page)
    see_also = page.split(".SH SEE ALSO\n", 1)[1]
    assert "README.md" in see_also


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


def test_list_all_fits_80_columns_with_a_64_character_agent_name(
    ready: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    agent = "a" * 30 + "-long-agent-name-" + "z" * 17
    assert len(agent) == 64
    ready.ok("agent", "add", agent, "--allow", "repo:read:acme/*")
    ready.ok("grant", agent, "--scope", "repo:read:acme/api", "--uses", "5")
    ids = [line.split()[0] for line in ready.ok("list").stdout.splitlines()[1:]]
    ready.ok("revoke", ids[0])
    header, *rows = ready.ok("list", "--all").stdout.splitlines()
    assert max(len(line) for line in [header, *rows]) <= 80
    assert header.split() == ["ID", "AGENT", "SCOPES", "EXPIRES", "USES", "STATUS"]
    start, end = header.index("AGENT"), header.index("SCOPES")
    assert "".join(row[start:end].strip() for row in rows) == agent  # folded, never cut
    first = rows[0].split()
    assert first[0] == ids[0] and first[-2:] == ["0/5", "revoked"]
    assert rows[0][header.index("EXPIRES") :].split()[:2] == ["in", "15m"]
