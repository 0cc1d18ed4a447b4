"""The one place nhidel reaches into Typer's private API: what it patches, and why.

Three patches, each installed once, each leaving Typer's own behaviour in place should a release
move what it patches (nhidel then still runs: slower to start, or with Typer's own help and
completion scripts). `tests/cli/test_typer_seam.py` checks that every patch takes, so a Typer
upgrade that defeats one fails the tests instead of passing unnoticed; pyproject.toml pins the
minor release they were written against (typer 0.29), the only one they are tested with.

1. **Plain conversion** (`_TyperParameter.get_runtime_param`). Typer 0.29 converts every value
   through a pydantic TypeAdapter, and importing pydantic costs about as much as importing Typer
   itself (~70 ms here) on every command. nhidel's parameters are all plain (text, whole numbers,
   flags, paths, a few StrEnum choices), so each gets a small converter of its own; any other
   annotation keeps Typer's conversion. `tests/cli/test_startup_imports.py` checks pydantic stays
   out.
2. **Conventional help** (`_TyperParameter.display_type_rich`, `TyperArgument._usage_display_name`).
   Typer shows a Python type on every parameter (`--ttl <str>`, `--json <bool>`,
   `<list[str]>`) and writes usage as `grant [OPTIONS] {agent}` and `revoke [[ID]...]...`.
   nhidel shows what man pages and `git`, `gh` and `vault` show: `--ttl DURATION`, flags without a
   value, `grant [OPTIONS] AGENT`, `revoke [OPTIONS] [ID]...`, from the same two functions the man
   page generator uses (`option_value_name`, `argument_usage`).
3. **nhidel's completion scripts** (`_completion_shared._completion_scripts`, each completion
   class's `source_template`, `install_bash` and `install_zsh`). `--show-completion` and
   `--install-completion` hand out the scripts in `shell_scripts.py` (which call nhidel's own
   completer, `complete.py`), not Typer's; and installing for zsh changes no setting but
   nhidel's own: Typer's installer also adds `zstyle ':completion:*' menu select` to
   ~/.zshrc, which changes how every command completes, and nhidel takes that line out again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, EnumMeta
from pathlib import Path
from typing import Any, get_args, get_origin

from nhidel.cli import shell_scripts


def install() -> None:
    """Plain conversion and conventional help: cheap, so every command gets them."""
    _use_plain_conversion()
    _use_conventional_help()


def _patch(cls: Any, name: str, replacement: Callable[..., Any]) -> None:
    replacement._nhidel = True  # type: ignore[attr-defined]
    setattr(cls, name, replacement)


def _patched(cls: Any, name: str) -> bool:
    """Whether `cls.name` is nhidel's already (the app is built more than once in tests)."""
    return bool(getattr(getattr(cls, name, None), "_nhidel", False))


# --- names in help, usage lines and the man page ---------------------------------------------


def option_value_name(option: Any) -> str | None:
    """What an option's value is called (`DURATION`, `token|json|env`), or None for a flag.

    Set as `metavar=` where the option is declared; a choice lists its values.
    """
    if getattr(option, "is_flag", False) or getattr(option, "count", False):
        return None
    if option.metavar:
        return str(option.metavar)
    annotation = getattr(getattr(option, "type_descriptor", None), "annotation", None)
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    if isinstance(annotation, EnumMeta):
        members: list[Enum] = list(annotation)
        return "|".join(str(member.value) for member in members)
    return str(option.name).upper()


def argument_usage(argument: Any) -> str:
    """An argument as the usage line shows it: `AGENT`, `[TOKEN]`, `ID...`, `[ID]...`."""
    name = str(argument.metavar or argument.name).upper()
    shown = name if argument.required else f"[{name}]"
    return shown + ("..." if argument.nargs != 1 else "")


def _use_conventional_help() -> None:
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:
        return
    if _patched(TyperOption, "display_type_rich"):
        return

    def option_type(option: Any, ctx: Any) -> str | None:
        return option_value_name(option)

    def argument_type(argument: Any, ctx: Any) -> str | None:
        return None  # the name column says it all: AGENT

    def usage_display_name(argument: Any) -> str:
        return argument_usage(argument)

    _patch(TyperOption, "display_type_rich", option_type)
    _patch(TyperArgument, "display_type_rich", argument_type)
    _patch(TyperArgument, "_usage_display_name", usage_display_name)


# --- conversion without pydantic -------------------------------------------------------------


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


def _use_plain_conversion() -> None:
    """Make every Typer parameter try a plain converter before building Typer's own.

    Patched on the class, not on each parameter, because click makes some parameters (`--help`)
    afresh for every command it runs. Typer builds a parameter's conversion lazily, on its first
    value, through `get_runtime_param`; ours is built there instead when one fits.
    """
    try:
        from typer._click.exceptions import BadParameter
        from typer._coercion import RuntimeParam
        from typer.core import _TyperParameter
    except ImportError:
        return
    if _patched(_TyperParameter, "get_runtime_param"):
        return

    @dataclass(frozen=True)
    class PlainRuntimeParam(RuntimeParam):
        """Typer's runtime conversion contract, fulfilled by one plain function per value."""

        convert: Callable[[Any], Any]

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if isinstance(value, (list, tuple)):
                    return [self.convert(item) for item in value]
                return self.convert(value)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None

    typer_builds = _TyperParameter.get_runtime_param

    def get_runtime_param(param: Any) -> Any:
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

    _patch(_TyperParameter, "get_runtime_param", get_runtime_param)


# --- the completion scripts ------------------------------------------------------------------


def serve_completion_scripts() -> None:
    """Make Typer's completion machinery hand out nhidel's scripts, whichever way it is asked.

    `--show-completion` and `--install-completion` read `_completion_shared._completion_scripts`;
    the `_NHIDEL_COMPLETE=source_bash` instruction reads each completion class's
    `source_template`; and the installers strip the script's final newline. Only the full app
    (help, the completion options) needs this: importing Typer's completion modules costs time.
    """
    try:
        from typer import _completion_classes, _completion_shared
    except ImportError:
        return
    table: Any = getattr(_completion_shared, "_completion_scripts", None)
    if isinstance(table, dict):
        for shell in shell_scripts.FILES:
            # Typer fills in %(prog_name)s and friends; these scripts name nhidel themselves.
            table[shell] = shell_scripts.script(shell).replace("%", "%%")
    for name, shell in (("BashComplete", "bash"), ("ZshComplete", "zsh"), ("FishComplete", "fish")):
        cls = getattr(_completion_classes, name, None)
        if cls is not None and hasattr(cls, "source_template"):
            cls.source_template = shell_scripts.script(shell).replace("%", "%%")
    for name in ("install_bash", "install_zsh"):
        installer = getattr(_completion_shared, name, None)
        if callable(installer) and not _patched(_completion_shared, name):
            if name == "install_zsh":
                installer = _without_global_zsh_style(installer)
            _patch(_completion_shared, name, _ending_in_newline(installer))


# What Typer's zsh installer adds to ~/.zshrc besides loading the completion: a style for every
# command's completion, not nhidel's to set.
GLOBAL_ZSH_STYLE = "zstyle ':completion:*' menu select"


def _without_global_zsh_style(installer: Callable[..., Any]) -> Callable[..., Any]:
    """Typer's zsh installer, then its global `zstyle` line taken out of ~/.zshrc again, unless
    the file held that line before (the user's own)."""

    def install(**kwargs: Any) -> Any:
        zshrc = Path.home() / ".zshrc"
        before = zshrc.read_text("utf-8") if zshrc.is_file() else ""
        path = installer(**kwargs)
        if GLOBAL_ZSH_STYLE not in before and zshrc.is_file():
            lines = zshrc.read_text("utf-8").splitlines()
            kept = [line for line in lines if line.strip() != GLOBAL_ZSH_STYLE]
            if kept != lines:
                zshrc.write_text("\n".join(kept).strip() + "\n", "utf-8")
        return path

    return install


def _ending_in_newline(installer: Callable[..., Any]) -> Callable[..., Any]:
    def install(**kwargs: Any) -> Any:
        path = installer(**kwargs)
        if isinstance(path, Path) and path.is_file():
            text = path.read_text("utf-8")
            if not text.endswith("\n"):
                path.write_text(text + "\n", "utf-8")
        return path

    return install
