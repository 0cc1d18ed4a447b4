"""`nhidel exec`: run a command with a grant minted for its lifetime (SPEC, "Letting an agent
act").

The child gets nhidel's environment with the grant in it (`NHIDEL_TOKEN`, `NHIDEL_GRANT_ID`)
and without what unlocks the keystore (`WITHHELD`); upstream secrets never enter it, since exec
never reads one. It runs in nhidel's process group, in the foreground as a shell would start
it, and nhidel waits for it, forwarding signals; its grant is revoked however it ends, and if
nhidel is killed, the kernel kills the child (Linux: PR_SET_PDEATHSIG) and the next command
revokes the grant (`nhidel.enforce.bound`).

Signals are taken synchronously (blocked, then `sigwaitinfo`) from just before the grant is
minted until it is revoked, so none interrupts the revocation and each can be told apart by
who sent it: one the terminal or the kernel sent (Ctrl-C, a window resize, a hangup) went to
the whole foreground process group, the child's too, and is not sent again; one sent to nhidel
alone (`kill PID`) is forwarded, unless the child sent it. Where there is no `sigwaitinfo`
(macOS), handlers forward instead, and cannot tell who sent a signal: SIGINT, SIGQUIT and
SIGWINCH, which mostly come from the terminal, are then not forwarded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nhidel.enforce.bound import bound_grant
from nhidel.errors import CannotRunError, CommandNotFoundError, signal_exit_status
from nhidel.hardening import PASSPHRASE_VARIABLES

if TYPE_CHECKING:
    from nhidel.actions.grants import GrantRequest
    from nhidel.keys.keystore import KeyStore
    from nhidel.paths import Paths

# What would let the child open the keystore: the keyring's D-Bus address and the passphrase.
# NHIDEL_KEYSTORE and NHIDEL_HOME stay: they say where nhidel's files are, not how to unlock
# them, and a child running `nhidel inspect` finds the right home.
WITHHELD = ("DBUS_SESSION_BUS_ADDRESS", *PASSPHRASE_VARIABLES)
FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH)  # fmt: skip
REVOKE_REASON = "exec ended"
_SI_KERNEL = 0x80  # si_code of a signal the kernel sent (the terminal's among them)
_PR_SET_PDEATHSIG = 1


def passphrase_variables(environ: Mapping[str, str]) -> list[str]:
    """The passphrase variables nhidel itself was given (exec warns: the child does not get
    them, but any process of the same user may read them, or the file one names)."""
    return [name for name in PASSPHRASE_VARIABLES if name in environ]


def child_environment(environ: Mapping[str, str], *, token: str, grant_id: str) -> dict[str, str]:
    """`environ` less `WITHHELD`, plus the grant."""
    env = {name: value for name, value in environ.items() if name not in WITHHELD}
    env["NHIDEL_TOKEN"] = token
    env["NHIDEL_GRANT_ID"] = grant_id
    return env


def resolve_command(name: str, environ: Mapping[str, str]) -> str:
    """The file `name` runs, as a shell finds it (a name with a slash as it is, else the first
    executable on PATH): CommandNotFoundError (127) or CannotRunError (126) before anything
    is minted."""
    if not name:
        raise CommandNotFoundError("no command to run", "give it after --: nhidel exec ... -- CMD")
    if "/" in name:
        path = name
    else:
        found = shutil.which(name, path=environ.get("PATH", os.defpath))
        if found is None:
            raise CommandNotFoundError(
                f"command not found: {name}", "check its name, or give its path"
            )
        path = found
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise CommandNotFoundError(f"cannot run {name}: {exc.strerror}", "check the path") from None
    except OSError as exc:  # there, but not reachable (a directory on the way not searchable)
        raise CannotRunError(
            f"cannot run {name}: {exc.strerror}", "check its permissions"
        ) from None
    if stat.S_ISDIR(info.st_mode) or not os.access(path, os.X_OK):
        what = "a directory" if stat.S_ISDIR(info.st_mode) else "not executable"
        raise CannotRunError(f"cannot run {name}: {what}", "give a program you may run")
    return path


def run(
    paths: Paths,
    keystore: KeyStore,
    request: GrantRequest,
    argv: Sequence[str],
    *,
    program: str,
    clock: Callable[[], int],
    proxy: bool = False,
) -> int:
    """Mint the grant, run `argv` (the file `program`) with it, revoke it once the child has
    ended, and return the child's exit status as a shell reports it (128 + N for signal N).
    With `proxy`, the HTTP broker runs on a loopback port for the child's lifetime, and the
    child is told where (`proxy_environment`).

    The audit log gets `exec.started` and `exec.ended`, naming the program by its file name
    alone (its arguments may hold anything) and the child's pid."""
    name = os.path.basename(argv[0])
    with _signals() as signals, contextlib.ExitStack() as stack:
        with bound_grant(paths, keystore, request, clock=clock, reason=REVOKE_REASON) as bound:
            signals.stop_if_asked()  # a Ctrl-C while minting: the child never starts
            env = child_environment(os.environ, token=bound.token, grant_id=bound.grant.id)
            if proxy:  # (started with the signals held: its thread never takes one)
                env.update(stack.enter_context(_broker(paths, keystore)))
            child = _start(argv, program, env, mask=signals.outer_mask)
            try:
                bound.record("exec.started", program=name, pid=child.pid)
            except BaseException:
                child.kill()  # nothing runs on a grant unrecorded
                signals.wait_for(child)
                raise
            status = signals.wait_for(child)
            stack.close()  # the broker stops (its requests in flight end) before the revocation
        # Revoked: now the record of how it ended, still with no signal to interrupt it.
        bound.record("exec.ended", program=name, pid=child.pid, exit_status=status)
    return status


@contextlib.contextmanager
def _broker(paths: Paths, keystore: KeyStore) -> Iterator[dict[str, str]]:
    """The HTTP broker on a loopback port for a `with` block, and the variables that point
    the child at it."""
    from nhidel.audit import AuditKeys
    from nhidel.enforce.broker import listen_tcp, running_broker
    from nhidel.integrity.state import sealed_config

    routes = sealed_config(paths, AuditKeys.of(keystore)).routes.values()
    with running_broker(paths, keystore, listen_tcp("127.0.0.1", 0)) as broker:
        yield proxy_environment(broker.url, {r.name: r.url_vars for r in routes})


def proxy_environment(url: str, routes: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """`NHIDEL_PROXY_URL`, and for each route `NHIDEL_ROUTE_<NAME>_URL` (the name upper-cased,
    `.` and `-` as `_`) and every variable it names with `--url-var`: its base URL through the
    broker, so a tool that reads a base URL from the environment uses the broker unchanged."""
    env = {"NHIDEL_PROXY_URL": url}
    for name, variables in routes.items():
        route_url = f"{url}/{name}"
        env[f"NHIDEL_ROUTE_{name.upper().replace('.', '_').replace('-', '_')}_URL"] = route_url
        env.update(dict.fromkeys(variables, route_url))
    return env


def _start(
    argv: Sequence[str], program: str, env: dict[str, str], *, mask: set[int]
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(  # noqa: S603 - running the user's command is the point
            list(argv), executable=program, env=env, preexec_fn=_child_setup(mask)
        )
    except FileNotFoundError as exc:
        raise CommandNotFoundError(
            f"cannot run {argv[0]}: {exc.strerror}", "check the path"
        ) from None
    except OSError as exc:  # EACCES, ENOEXEC (not a program), EISDIR, ...
        raise CannotRunError(
            f"cannot run {argv[0]}: {exc.strerror}", "check that it is a program you may run"
        ) from None


def _child_setup(mask: set[int]) -> Callable[[], None]:
    """What the child does between fork and exec: ask to be killed when nhidel dies, make
    sure nhidel has not died already, and take back the signal mask nhidel blocked.

    Everything it needs is looked up here, in the parent: the child only calls."""
    parent = os.getpid()
    prctl = _prctl()

    def setup() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # nhidel may have died after the fork and before the prctl: then no signal comes.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    return setup


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    found: Callable[..., int] = prctl
    return found


class StoppedBySignal(Exception):  # noqa: N818 - how exec ends, as Terminated in cli/errors.py
    """nhidel was sent `signum` before the child started; it ends as that signal would."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _signals() -> _Signals | _HandledSignals:
    """How this platform holds and forwards signals while a child runs."""
    return _Signals() if SIGINFO else _HandledSignals()


CHILD_POLL = 0.5  # seconds between looks at the child when no SIGCHLD came
SIGINFO = hasattr(signal, "sigwaitinfo")  # Linux and most Unixes; not macOS


def _ignore(_signum: int, _frame: object) -> None:
    """Held signals are taken by `sigwaitinfo`; this handler only keeps one that slips through
    (to another thread) from ending nhidel before its grant is revoked."""


class _Signals:
    """The forwarded signals and SIGCHLD blocked and waited for, for the block's duration."""

    def __init__(self) -> None:
        # A signal ignored when nhidel started (`nohup`, `cmd &` in a script) stays ignored:
        # the child inherits that, as it would from a shell, and nothing is forwarded.
        self.forwarded = [s for s in FORWARDED if signal.getsignal(s) is not signal.SIG_IGN]
        self.waited = {*self.forwarded, signal.SIGCHLD}
        self._handlers: dict[int, Any] = {}
        self.outer_mask: set[int] = set()  # the mask before the block: the child's

    def __enter__(self) -> _Signals:
        self.outer_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.waited)
        for sig in self.forwarded:
            self._handlers[sig] = signal.signal(sig, _ignore)
        return self

    def __exit__(self, *exc: object) -> None:
        # The child is gone: what arrived for it meanwhile has no one left to go to.
        with contextlib.suppress(OSError):
            while signal.sigtimedwait(self.waited, 0) is not None:
                pass
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.outer_mask)

    def stop_if_asked(self) -> None:
        """StoppedBySignal if a signal that ends a program came before the child started
        (a Ctrl-C while the grant was minted): the child is never started."""
        pending = signal.sigpending() & (set(self.forwarded) - {signal.SIGWINCH})
        if pending:
            signum = min(pending)
            signal.sigtimedwait({signum}, 0)
            raise StoppedBySignal(signum)

    def wait_for(self, child: subprocess.Popen[bytes]) -> int:
        """Forward signals to `child` until it ends; its exit status as a shell says it."""
        while True:
            # With a timeout: in a process with other threads (nhidel used as a library), the
            # kernel may hand SIGCHLD to one that does not block it, and it is lost to us.
            info = signal.sigtimedwait(self.waited, CHILD_POLL)
            if info is None or info.si_signo == signal.SIGCHLD:
                pid, status = os.waitpid(child.pid, os.WNOHANG)
                if pid == child.pid:
                    code = os.waitstatus_to_exitcode(status)
                    child.returncode = code
                    return signal_exit_status(-code) if code < 0 else code
            elif info.si_code != _SI_KERNEL and info.si_pid != child.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, info.si_signo)


class _HandledSignals:
    """`_Signals` where there is no `sigwaitinfo`: handlers that never raise (so nothing
    interrupts the revocation) forward what comes while the child runs."""

    FROM_A_TERMINAL = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH})

    def __init__(self) -> None:
        self.forwarded = [s for s in FORWARDED if signal.getsignal(s) is not signal.SIG_IGN]
        self.outer_mask: set[int] = signal.pthread_sigmask(signal.SIG_BLOCK, set())
        self._handlers: dict[int, Any] = {}
        self._child: subprocess.Popen[bytes] | None = None
        self._before_child: list[int] = []

    def __enter__(self) -> _HandledSignals:
        for sig in self.forwarded:
            self._handlers[sig] = signal.signal(sig, self._forward)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)

    def _forward(self, signum: int, _frame: object) -> None:
        child = self._child
        if child is None:
            self._before_child.append(signum)
        elif signum not in self.FROM_A_TERMINAL and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    def stop_if_asked(self) -> None:
        ending = [s for s in self._before_child if s != signal.SIGWINCH]
        if ending:
            raise StoppedBySignal(ending[0])
        self._before_child.clear()

    def wait_for(self, child: subprocess.Popen[bytes]) -> int:
        self._child = child
        for signum in self._before_child:  # came while the child was being started
            self._forward(signum, None)
        _, status = os.waitpid(child.pid, 0)  # a handler runs, then the wait goes on (PEP 475)
        code = os.waitstatus_to_exitcode(status)
        child.returncode = code
        return signal_exit_status(-code) if code < 0 else code
