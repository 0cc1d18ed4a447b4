"""Keep the secrets a process holds inside that process.

A process that has read the private key, the audit key or the keystore's passphrase must not
hand them out by other routes than the ones nhidel chose:
- a core file (a crash with core dumps enabled writes the whole heap, keys included, to disk);
- another process of the same user attaching with ptrace or reading /proc/PID/mem or
  /proc/PID/environ (the agent nhidel hands grants to often runs as that same user);
- a child process inheriting NHIDEL_PASSPHRASE from the environment.

`protect_secrets_in_memory` is called by the keystore before the first secret is read; it is
cheap and idempotent. Linux: RLIMIT_CORE (0, 0) and PR_SET_DUMPABLE 0 (which also makes
/proc/PID/{mem,environ,maps} unreadable to the user's other processes and refuses their ptrace).
macOS: RLIMIT_CORE (0, 0). Elsewhere nothing, quietly.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

PASSPHRASE_VARIABLE = "NHIDEL_PASSPHRASE"  # noqa: S105 - the name of a variable
# Both are kept from nhidel's own worker processes: the second only names a file, but a worker
# needs neither, and what a child is not given it cannot pass on.
PASSPHRASE_VARIABLES = (PASSPHRASE_VARIABLE, "NHIDEL_PASSPHRASE_FILE")

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3
_protected = False


def protect_secrets_in_memory() -> None:
    """No core file, no same-user ptrace or /proc/PID/mem, for the rest of this process.

    Both settings are inherited by forked children (the parallel `audit verify` workers hold
    the audit key too) and reset by exec for programs nhidel might run, which hold no secret.
    The hard core limit goes to 0 as well, so nothing later in the process can raise it again.
    Failures are ignored: this narrows what an attacker can reach, it never stops nhidel.
    """
    global _protected
    if _protected:
        return
    _protected = True
    if sys.platform == "win32":
        return
    import resource

    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        libc = _libc()
        if libc is not None:
            libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    # macOS has ptrace(PT_DENY_ATTACH), but it kills a process that is already being debugged,
    # and the Python API runs inside other people's programs: the core limit is enough there.


def is_dumpable() -> bool | None:
    """PR_GET_DUMPABLE on Linux (for tests and diagnostics); None where it cannot be asked."""
    if not sys.platform.startswith("linux"):
        return None
    libc = _libc()
    return None if libc is None else bool(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))


def take_from_environment(name: str) -> str | None:
    """Remove `name` from this process's environment and return its value.

    `os.environ.pop` also unsets it in the C environment (so no child started later, by nhidel
    or by anything else in the process, inherits it). On Linux the value is first overwritten
    where it sits in the environment block the process started with: unsetenv only drops the
    pointer, and /proc/PID/environ, of this process and of every child forked from it, shows
    that block as it is in memory.
    """
    value = os.environ.get(name)
    if value is None:
        return None
    if sys.platform.startswith("linux"):
        _scrub_initial_environment(name)
    os.environ.pop(name, None)
    return value


@contextlib.contextmanager
def withheld_from_environment(names: Iterable[str]) -> Iterator[None]:
    """Start child processes inside this block: none of `names` is in the environment they get.

    For forked children there is no environment to pass, only the parent's to copy, so the
    variables leave the parent's environment for the block and come back after it (unchanged,
    for the program hosting the Python API; the nhidel CLI has dropped the passphrase already).
    """
    withheld = {}
    for name in names:
        value = take_from_environment(name)
        if value is not None:
            withheld[name] = value
    try:
        yield
    finally:
        os.environ.update(withheld)


def _libc() -> ctypes.CDLL | None:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _scrub_initial_environment(name: str) -> None:
    """Zero the value of `name` in place, if it lies in the block the kernel set up at exec.

    Only there: a value put by setenv lives in libc's heap, where glibc keeps it in a search
    tree that must not change under it (and /proc/PID/environ never shows it anyway).
    """
    import ctypes

    try:
        # Fields 50 and 51 of /proc/PID/stat (proc(5)): env_start, env_end. After "pid (comm)"
        # the third field is index 0. Always readable by the process itself.
        fields = Path("/proc/self/stat").read_bytes().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])
        libc = _libc()
        if libc is None:
            return
        getenv = libc.getenv
        getenv.restype = ctypes.c_void_p
        getenv.argtypes = [ctypes.c_char_p]
        address = getenv(os.fsencode(name))
    except (OSError, IndexError, ValueError, AttributeError):
        return
    if address is None or not start <= address < end:
        return
    length = min(len(ctypes.string_at(address)), end - address)
    ctypes.memset(address, 0, length)
