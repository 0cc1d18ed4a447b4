"""A desktop notification where the platform has one, never required: `notify-send` on Linux
(and other Unix desktops), `osascript` on macOS. Absent, slow or failing, it is silent.

The text goes as arguments to the program itself, never through a shell, and `osascript`
reads it from `argv` rather than from the script, so nothing in it can run. notify-send's
body is markup to many notification servers: `&`, `<` and `>` are escaped. The caller keeps
secrets out of the text: another local user can read a program's arguments while it runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading

TIMEOUT = 5  # seconds a notifier may take before it is left to itself
MAX_TEXT = 200
_APPLESCRIPT = (
    "on run argv\ndisplay notification (item 2 of argv) with title (item 1 of argv)\nend run"
)


def notify(title: str, body: str) -> None:
    """Show `title` and `body` on the desktop, in the background, if the platform can."""
    body = body if len(body) <= MAX_TEXT else body[: MAX_TEXT - 1] + "…"
    command = notifier_command(title, body, platform=sys.platform)
    if command is None:
        return
    threading.Thread(target=_run, args=(command,), daemon=True).start()


def notifier_command(title: str, body: str, *, platform: str) -> list[str] | None:
    """The notifier's argv for `platform`, or None when none is on PATH."""
    if platform == "darwin":
        program = shutil.which("osascript")
        return None if program is None else [program, "-e", _APPLESCRIPT, title, body]
    program = shutil.which("notify-send")
    if program is None:
        return None
    marked = body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return [program, "--app-name=nhidel", "--", title, marked]


def _run(command: list[str]) -> None:
    try:
        subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # noqa: S603
                       stderr=subprocess.DEVNULL, timeout=TIMEOUT, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pass  # no desktop, no bus, too slow: the terminal view is what counts
