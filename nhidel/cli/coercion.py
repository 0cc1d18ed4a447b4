"""Parameter values converted without pydantic.

Typer 0.29 converts every command-line value through a pydantic TypeAdapter, and importing
pydantic costs about as much as importing Typer itself (~70 ms here), on every command. nhidel's
parameters are all plain (text, whole numbers, flags, paths and a few StrEnum choices) and need
no validation library, so `use_plain_coercion` gives each of them a small converter of its own.
Any other annotation keeps Typer's own conversion.

This reaches into Typer's private `_TyperParameter.get_runtime_param` (which builds the
conversion lazily, on a parameter's first value), one more reason pyproject.toml pins
typer<0.30. A test checks that commands run without importing pydantic, so a Typer release
that moves it cannot slow nhidel down unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from typer._click import Context
from typer._click.exceptions import BadParameter
from typer._coercion import RuntimeParam
from typer.core import _TyperParameter


@dataclass(frozen=True)
class PlainRuntimeParam(RuntimeParam):
    """Typer's runtime conversion contract, fulfilled by one plain function per value."""

    convert: Callable[[Any], Any]

    def _coerce_value(self, value: Any, param: Any, ctx: Context) -> Any:
        try:
            if isinstance(value, (list, tuple)):
                return [self.convert(item) for item in value]
            return self.convert(value)
        except ValueError as exc:
            raise BadParameter(str(exc), ctx=ctx, param=param) from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def _whole_number(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if not text.lstrip("+-").isdigit() or not text.isascii():
        raise ValueError(f"{value!r} is not a whole number")
    return int(text)


_FLAG_WORDS = {"1": True, "true": True, "yes": True, "on": True,
               "0": False, "false": False, "no": False, "off": False}  # fmt: skip


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    # Flags arrive as bools; text (an environment variable, should one be added) as click reads it.
    word = _FLAG_WORDS.get(str(value).strip().lower())
    if word is None:
        raise ValueError(f"{value!r} is not true or false")
    return word


def _path(value: Any) -> Path:
    return value if isinstance(value, Path) else Path(_text(value))


def _choice(enum: type[Enum]) -> Callable[[Any], Enum]:
    members = {member.value: member for member in enum}
    allowed = ", ".join(repr(name) for name in members)

    def convert(value: Any) -> Enum:
        if isinstance(value, enum):
            return value
        if value not in members:
            raise ValueError(f"{value!r} is not one of {allowed}")
        return members[value]

    return convert


def converter_for(annotation: Any) -> Callable[[Any], Any] | None:
    """The plain converter for a parameter's annotation, or None to leave it to Typer."""
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    if annotation is str:
        return _text
    if annotation is bool:
        return _flag
    if annotation is int:
        return _whole_number
    if annotation is Path:
        return _path
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _choice(annotation)
    return None


def use_plain_coercion() -> None:
    """Make every Typer parameter try a plain converter before building Typer's own.

    Patched on the class, not on each parameter, because click makes some parameters (`--help`)
    afresh for every command it runs.
    """
    if getattr(_TyperParameter.get_runtime_param, "_nhidel", False):
        return
    typer_builds = _TyperParameter.get_runtime_param

    def get_runtime_param(param: _TyperParameter) -> RuntimeParam:
        if param._runtime_param is None:
            descriptor = param.type_descriptor
            convert = converter_for(descriptor.annotation)
            if convert is not None:
                param._runtime_param = PlainRuntimeParam(
                    parameter_info=descriptor.parameter_info,
                    annotation=descriptor.annotation,
                    convert=convert,
                )
        return typer_builds(param)

    get_runtime_param._nhidel = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign,assignment]
