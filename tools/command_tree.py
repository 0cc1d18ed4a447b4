"""The Typer app's commands as the docs generator walks them: paths, parameters, names."""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum, EnumMeta
from typing import Any


def command_tree() -> Iterator[tuple[str, Any, Any]]:
    """(path, click command, its context) for the root and every command, in help order."""
    from nhidel.cli.app import command

    root = command()

    def walk(path: str, command: Any, parent: Any) -> Iterator[tuple[str, Any, Any]]:
        # The command's own context class: no need to reach into Typer for its vendored click.
        ctx = command.context_class(
            command, info_name=path.rpartition(" ")[2] or "nhidel", parent=parent,
            **(command.context_settings if parent is None else {}),
        )  # fmt: skip
        yield path, command, ctx
        for name, child in getattr(command, "commands", {}).items():
            if not child.hidden:
                yield from walk(f"{path} {name}".strip(), child, ctx)

    yield from walk("", root, None)


def choices(param: Any) -> tuple[str, ...]:
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if isinstance(annotation, EnumMeta):
        members: list[Enum] = list(annotation)
        return tuple(str(member.value) for member in members)
    return tuple(getattr(getattr(param, "type", None), "choices", None) or ())


def params(command: Any, ctx: Any) -> tuple[list[Any], list[Any]]:
    shown = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    return (
        [p for p in shown if p.param_type_name == "argument"],
        [p for p in shown if p.param_type_name == "option"],
    )


def names(option: Any) -> list[str]:
    """An option's names, short ones first (click keeps the help option's in a set)."""
    return sorted(option.opts + option.secondary_opts, key=lambda n: (n.startswith("--"), n))


def summary(command: Any) -> str:
    return " ".join((command.help or "").split("\n\n")[0].split())
