"""The man page, man/nhidel.1, from the Typer app and the README (written by `gendocs`).

Commands and options come from the app, with whether an option is required and its default;
the ENVIRONMENT, FILES, EXIT STATUS and SECURITY sections are taken from the README, so the two
say the same thing. The output depends on nothing else (no build date), so the drift check in
`gendocs --check` is stable.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from nhidel.cli.typer_seam import argument_usage, option_value_name
from tools.command_tree import command_tree, names, params, summary

# The date in the page's footer: that of the release named by nhidel.__version__. A constant,
# not today's date, so that regenerating the page changes nothing; bump it with the version.
RELEASE_DATE = "2026-11-23"

EXAMPLES = [
    ("Register an agent that may read any repository of acme, for at most an hour:",
     "nhidel agent add reviewer --allow 'repo:read:acme/*' --max-ttl 1h"),
    ("Mint a 15-minute grant; the token alone goes to stdout:",
     "TOKEN=$(nhidel grant reviewer --scope repo:read:acme/api --ttl 15m)"),
    ("Check an action at a gateway, reading the token from stdin:",
     'echo "$TOKEN" | nhidel verify - --scope repo:read:acme/api'),
    ("See the live grants, then revoke one (TAB completes the id):",
     "nhidel list\nnhidel revoke gq3v7k2m1x --reason 'PR merged'"),
    ("Check the audit log, e.g. from cron:", "nhidel audit verify -q || echo tampered"),
]  # fmt: skip


# -- roff --------------------------------------------------------------------------------


def _roff(text: str) -> str:
    """Plain text as roff: backslashes escaped, hyphens as the minus sign `\\-` (so options,
    paths and commands copy and paste, and search, as typed), nothing read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in ".'" else line for line in text.split("\n"))


def _roff_inline_markdown(text: str) -> str:
    """README prose as roff: `code` and **bold** in bold, links and other markup dropped."""
    text = _roff(re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text))
    text = re.sub(r"\*\*(.+?)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)
    return text


def _readme_section(readme: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    if match is None:
        raise SystemExit(f"error: README.md has no '## {title}' section for the man page")
    return match.group(1).strip()


def _table_rows(section: str) -> list[tuple[str, str]]:
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and not set(cells[0]) <= set("- "):
            rows.append((cells[0], cells[1]))
    return rows[1:]  # the header


def _bullets(section: str) -> tuple[str, list[str]]:
    """The prose before a bullet list, and each bullet joined into one line."""
    intro, items = [], []
    for line in section.splitlines():
        if line.startswith("- "):
            items.append(line[2:].strip())
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
        elif not items and line.strip():
            intro.append(line.strip())
    return " ".join(intro), items


def _option_text(option: Any) -> str:
    """The option's help, then whether it is required, or its default when it has one."""
    text = option.help or ""
    if option.required:
        return f"{text} Required.".strip()
    default = option.default
    if option.is_flag or option.show_default is False or default in (None, (), []):
        return text
    if callable(default):
        return text
    shown = default.value if isinstance(default, Enum) else default
    if isinstance(option.show_default, str):
        shown = option.show_default
    return f"{text} Default: {shown}.".strip()


def _option_label(option: Any) -> str:
    label = ", ".join("\\fB" + name.replace("-", "\\-") + "\\fR" for name in names(option))
    value = option_value_name(option)
    return label if value is None else f"{label} \\fI{value}\\fR"


def man_page(readme: str) -> str:
    from nhidel import __version__

    out = [
        f'.TH NHIDEL 1 "{RELEASE_DATE}" "nhidel {__version__}" "User Commands"',
        ".SH NAME",
        "nhidel \\- mint scoped, time\\-boxed, revocable grants for named agents",
        ".SH SYNOPSIS",
        ".B nhidel",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
        _roff_inline_markdown(" ".join(readme.split("\n\n")[1].split())),
    ]
    for path, command, ctx in command_tree():
        arguments, options = params(command, ctx)
        if not path:
            out += [".SH OPTIONS", "These come before the command.", ".PP"]
        elif getattr(command, "commands", None):
            continue  # a group: its commands have their own entries
        else:
            if ".SH COMMANDS" not in out:
                out.append(".SH COMMANDS")
            usage = " ".join(["[\\fIOPTIONS\\fR]"] + [argument_usage(a) for a in arguments])
            out += [f'.SS "nhidel {path}"', f".B nhidel {path}", usage, ".PP"]
            out.append(_roff(summary(command)))
            for argument in arguments:
                if argument.help:
                    out += [".TP", f"\\fI{argument_usage(argument)}\\fR", _roff(argument.help)]
        for option in options:
            out += [".TP", _option_label(option), _roff(_option_text(option))]
    out.append(".SH ENVIRONMENT")
    for name, effect in _table_rows(_readme_section(readme, "Environment")):
        out += [".TP", _roff_inline_markdown(name), _roff_inline_markdown(effect)]
    intro, files = _bullets(_readme_section(readme, "Files"))
    out += [".SH FILES", _roff_inline_markdown(intro)]
    for item in files:
        label, _, text = item.partition(": ")
        out += [".TP", _roff_inline_markdown(label), _roff_inline_markdown(text)]
    out.append(".SH EXIT STATUS")
    for code, meaning in _table_rows(_readme_section(readme, "Exit codes")):
        out += [".TP", f"\\fB{code}\\fR", _roff_inline_markdown(meaning)]
    out.append(".SH EXAMPLES")
    for text, commands in EXAMPLES:
        out += [".PP", _roff(text), ".PP", ".RS", ".nf"]
        out += [_roff(line) for line in commands.splitlines()]
        out += [".fi", ".RE"]
    intro, points = _bullets(_readme_section(readme, "Security model"))
    out += [".SH SECURITY", _roff_inline_markdown(intro)]
    for point in points:
        out += [".IP \\(bu 2", _roff_inline_markdown(point)]
    out += [
        ".SH SEE ALSO",
        "The project's README.md (in its source distribution and repository), for the audit",
        "log's design and the Python API.",
        "",
    ]
    return "\n".join(out)
