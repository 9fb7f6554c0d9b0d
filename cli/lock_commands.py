"""kvctl lock and kvctl elect: run a command while holding a distributed lock, or while
leading an election (raftkv.client.lock, raftkv.client.election), as etcdctl's ``lock``
and ``elect`` do.

Both hold a lease that kvctl keeps alive. When it is lost (no keep-alive acknowledged
in time, or the lease was revoked) someone else may soon hold what it protected, so the
command is stopped at once: SIGTERM, then SIGKILL after a grace period, and kvctl exits
with EXIT_LOST. The fencing token (RAFTKV_LOCK_TOKEN, RAFTKV_ELECTION_REVISION) lets a
resource refuse a holder that was superseded all the same.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from types import FrameType
from typing import Any, Literal, TypeVar

import click
import orjson

from raftkv.client.election import Election, Leader
from raftkv.client.leases import MIN_TTL_S
from raftkv.client.lock import Lock, LockLostError, LockTimeoutError

from . import output
from .context import CommandContext, emit, pass_command_context
from .errors import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, fail

EXIT_LOST = 75
"""The lock or the leadership was lost (EX_TEMPFAIL: trying again may work)."""
EXIT_LOCK_TIMEOUT = 124
"""``kvctl lock --timeout``: not acquired in time (as timeout(1) reports a timeout)."""
EXIT_CANNOT_RUN = 126
EXIT_COMMAND_NOT_FOUND = 127
"""As a shell reports a command it could not run, or did not find."""

DEFAULT_TTL = 10.0
DEFAULT_KILL_AFTER = 5.0
_POLL_S = 0.05
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Phase = Literal["waiting", "running", "holding", "leaving"]
_F = TypeVar("_F", bound=Callable[..., Any])


class _Interrupted(BaseException):
    """A signal arrived while kvctl waited for the lock or the leadership (a
    BaseException, like KeyboardInterrupt, so that the waiting code cleans up)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _keyboard_reaches_command() -> bool:
    """Whether kvctl's process group, which the command shares, is in the foreground of
    kvctl's terminal: a SIGINT then came from Ctrl-C most likely, and the terminal sent it
    to the command as well."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def _send(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


class Supervisor:
    """Runs one command while a lease-backed hold (a lock, a leadership) lasts, and
    stops it when the hold is lost; handles kvctl's signals meanwhile.

    ``on_lost`` is the keeper's callback (it runs on another thread). The signal
    handlers depend on the phase: while waiting for the hold a signal interrupts the wait
    (``_Interrupted``, the waiting code leaves the queue); while the command runs it is
    passed on to the command; while holding without a command it ends the hold; while
    leaving it is ignored, so that the lease is revoked.
    """

    def __init__(self, what: str, kill_after: float) -> None:
        self.what = what
        self.kill_after = kill_after
        self.phase: Phase = "waiting"
        self.lost = threading.Event()
        self.reason = ""
        self.signalled: int | None = None
        self._guard = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._terminated = False  # on_lost sent the command SIGTERM
        self._pending: list[int] = []

    # -- the lease keeper's side ----------------------------------------------------

    def on_lost(self, reason: str) -> None:
        with self._guard:
            if self.lost.is_set():
                return
            self.reason = reason
            self.lost.set()
            process = self._process
            self._terminated = process is not None
        if process is not None:
            _send(process, signal.SIGTERM)

    def report_lost(self, stopping: bool) -> None:
        what = f"kvctl: {self.what} lost ({self.reason or 'its lease expired'})"
        click.echo(f"{what}: sent SIGTERM to the command" if stopping else what, err=True)

    # -- signals --------------------------------------------------------------------

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Handle SIGINT, SIGTERM and SIGHUP as the phase says (main thread only). One
        that kvctl was started ignoring (nohup, a background job) stays ignored, by the
        command too."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            signum: handler
            for signum in _FORWARDED
            if (handler := signal.getsignal(signum)) != signal.SIG_IGN
        }
        for signum in previous:
            signal.signal(signum, self._on_signal)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signalled is None:
            self.signalled = signum
        if self.phase == "waiting":
            self.phase = "leaving"  # a second signal must not interrupt the clean-up
            raise _Interrupted(signum)
        if self.phase == "running":
            if signum == signal.SIGINT and _keyboard_reaches_command():
                return  # Ctrl-C: the command had it from the terminal already
            if self._process is None:
                self._pending.append(signum)
            else:
                _send(self._process, signum)

    # -- running and holding --------------------------------------------------------

    def run(self, argv: Sequence[str], env: dict[str, str]) -> int:
        """Run ``argv`` until it exits; its exit status, or EXIT_LOST if the hold was
        lost meanwhile (the command was then sent SIGTERM, SIGKILL after
        ``kill_after`` seconds)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.phase = "running"
        with self._guard:
            if self.lost.is_set():
                self.report_lost(stopping=False)
                return EXIT_LOST
            try:
                process = subprocess.Popen(list(argv), env=env)
            except FileNotFoundError:
                click.echo(f"kvctl: {argv[0]}: command not found", err=True)
                return EXIT_COMMAND_NOT_FOUND
            except OSError as exc:
                click.echo(f"kvctl: {argv[0]}: cannot run it: {exc.strerror or exc}", err=True)
                return EXIT_CANNOT_RUN
            # From now on on_lost stops the command (it waits for the guard meanwhile).
            self._process = process
        for signum in self._pending:
            _send(process, signum)
        self._pending.clear()
        terminated_at: float | None = None
        killed = False
        while True:
            try:
                returncode = process.wait(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if not self.lost.is_set():
                continue
            now = time.monotonic()
            if terminated_at is None:
                terminated_at = now  # on_lost sent the SIGTERM
                self.report_lost(stopping=True)
            elif not killed and now - terminated_at >= self.kill_after:
                killed = True
                click.echo(
                    f"kvctl: the command did not exit within {self.kill_after:g}s of SIGTERM: "
                    "sent SIGKILL",
                    err=True,
                )
                _send(process, signal.SIGKILL)
        self.phase = "leaving"
        if self.lost.is_set():
            if terminated_at is None:  # the command exited before the loss was noticed
                self.report_lost(stopping=self._terminated)
            return EXIT_LOST
        return exit_status(returncode)

    def hold(self) -> int:
        """Until a signal (EXIT_OK) or the hold is lost (EXIT_LOST)."""
        self.phase = "holding"
        while self.signalled is None and not self.lost.wait(_POLL_S):
            pass
        self.phase = "leaving"
        if self.lost.is_set():
            self.report_lost(stopping=False)
            return EXIT_LOST
        return EXIT_OK


def _exit(code: int) -> None:
    if code:
        raise click.exceptions.Exit(code)


def _check_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value or "/" in value:
        raise click.BadParameter("a name is a non-empty word without '/'", ctx, param)
    return value


class CommandAfterDashes(click.Command):
    """A command whose last words, after ``--``, are a command line to run: kvctl parses
    only the words before the ``--`` (so the command's own options are its own). The
    command line is the ``command`` parameter: None without ``--``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        command: tuple[str, ...] | None = None
        if "--" in args:
            at = args.index("--")
            args, command = args[:at], tuple(args[at + 1 :])
        try:
            rest = super().parse_args(ctx, args)
        except click.UsageError as exc:
            if not exc.message.startswith("Got unexpected extra argument"):
                raise
            hint = f"{exc.message}; the command to run goes after '--'"
            raise click.UsageError(hint, exc.ctx) from None
        ctx.params["command"] = command
        return rest

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- COMMAND [ARGS]...]"]


def _kill_after_option() -> Callable[[_F], _F]:
    return click.option(
        "--kill-after",
        type=click.FloatRange(min=0),
        default=DEFAULT_KILL_AFTER,
        show_default=True,
        metavar="SECONDS",
        help="When the hold is lost, SIGKILL the command this long after its SIGTERM.",
    )


def _ttl_option(what: str) -> Callable[[_F], _F]:
    return click.option(
        "--ttl",
        type=click.FloatRange(min=MIN_TTL_S),
        default=DEFAULT_TTL,
        show_default=True,
        metavar="SECONDS",
        help=f"The TTL of the lease behind the {what}: kvctl keeps it alive every third of "
        f"it; if kvctl dies, the {what} ends at most this long after.",
    )


# ---------------------------------------------------------------------- lock


@click.command("lock", cls=CommandAfterDashes)
@click.argument("name", callback=_check_name)
@_ttl_option("lock")
@click.option(
    "--timeout",
    "wait_for",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Give up waiting for the lock after SECONDS (exit status 124); default: wait "
    "as long as it takes.",
)
@_kill_after_option()
@pass_command_context
def lock_cmd(
    context: CommandContext,
    name: str,
    ttl: float,
    wait_for: float | None,
    kill_after: float,
    command: tuple[str, ...] | None,
) -> None:
    """Run COMMAND while holding the lock NAME, as 'etcdctl lock NAME COMMAND'.

    kvctl waits for the lock (contenders get it in the order they asked), runs COMMAND
    with RAFTKV_LOCK_KEY (the lock's key) and RAFTKV_LOCK_TOKEN (its fencing token: a
    number higher for every new holder) in its environment, releases the lock when
    COMMAND exits, and exits with COMMAND's status. Words after '--' are COMMAND's own:

    \b
      kvctl lock nightly-report -- ./report.sh --full

    If the lock is lost while COMMAND runs (kvctl could not keep its lease alive, or the
    lease was revoked), COMMAND is sent SIGTERM at once, and SIGKILL --kill-after
    seconds later; kvctl says so and exits with status 75. A resource that remembers the
    highest RAFTKV_LOCK_TOKEN it has seen and refuses lower ones stays safe even from a
    holder that did not stop in time.

    SIGINT, SIGTERM and SIGHUP sent to kvctl are passed on to COMMAND, and kvctl waits
    for it to exit (a Ctrl-C at the terminal reaches COMMAND directly, and only once).
    Unlike etcdctl, kvctl needs a COMMAND: without one it is a usage error (2).

    \b
    Exit status:
      COMMAND's status (128 + N if it was killed by signal N)
      75   the lock was lost (before or while COMMAND ran)
      124  --timeout passed before the lock was acquired; COMMAND did not run
      126  COMMAND could not be run; 127: it was not found
      130  interrupted while waiting for the lock (143: SIGTERM)
      1-7  kvctl's own errors before COMMAND ran (see 'kvctl --help')
    """
    if not command:
        fail(EXIT_USAGE, "lock: give the command to run after '--': kvctl lock NAME -- COMMAND")
    supervisor = Supervisor(f"lock {name!r}", kill_after)
    lock = Lock(context.client, name, ttl=ttl, on_lost=supervisor.on_lost)
    with supervisor.signals():
        try:
            try:
                token = lock.acquire(wait_for)
            except LockTimeoutError:
                fail(EXIT_LOCK_TIMEOUT, f"lock {name!r}: not acquired within {wait_for:g}s")
            except LockLostError as exc:
                fail(EXIT_LOST, f"lock {name!r} lost while waiting for it: {exc.message}")
            env = {**os.environ, "RAFTKV_LOCK_KEY": lock.key, "RAFTKV_LOCK_TOKEN": str(token)}
            code = supervisor.run(command, env)
        except _Interrupted as exc:  # while waiting, or just after the acquisition
            code = exit_status(-exc.signum)
        finally:
            # Nothing to do unless the lock was acquired (acquire() cleans up after itself).
            supervisor.phase = "leaving"
            _leave(lock.release, "release the lock", ttl)
    _exit(code)


def _leave(release: Any, what: str, ttl: float) -> None:
    try:
        release()
    except Exception as exc:
        click.echo(
            f"kvctl: could not {what} ({exc}); it ends when its lease expires, within {ttl:g}s",
            err=True,
        )


# ---------------------------------------------------------------------- elect


def leader_document(name: str, leader: Leader | None) -> dict[str, Any]:
    if leader is None:
        return {"name": name, "leader": None}
    return {
        "name": name,
        "leader": {
            "key": leader.key,
            **output.value_fields(leader.value),
            "revision": leader.revision,
        },
    }


def _value_line(value: bytes) -> str:
    try:
        return output.printable(value.decode("utf-8"))
    except UnicodeDecodeError:
        return output.value_preview(value)


@click.command("elect", cls=CommandAfterDashes)
@click.argument("name", callback=_check_name)
@click.argument("value", required=False)
@_ttl_option("candidacy")
@click.option(
    "--observe",
    is_flag=True,
    help="Print the leader's value now and each time it changes, until Ctrl-C.",
)
@_kill_after_option()
@pass_command_context
def elect_cmd(
    context: CommandContext,
    name: str,
    value: str | None,
    ttl: float,
    observe: bool,
    kill_after: float,
    command: tuple[str, ...] | None,
) -> None:
    """Stand for leader of election NAME with VALUE; or show its leader.

    \b
      kvctl elect NAME VALUE [-- COMMAND...]   campaign, then lead
      kvctl elect NAME                         print the leader's value
      kvctl elect NAME --observe               print it at every change

    With VALUE kvctl campaigns (candidates lead in the order they stood) and, once
    elected, prints 'elected (revision N)'; N, higher for every new leader, is a fencing
    token. Without COMMAND it then leads until SIGINT, SIGTERM or SIGHUP, resigns and
    exits 0, as 'etcdctl elect NAME VALUE'. With COMMAND (after '--') it runs COMMAND
    while leading, with RAFTKV_ELECTION_KEY and RAFTKV_ELECTION_REVISION in its
    environment, resigns when it exits, and exits with its status, as 'kvctl lock' does.

    If the leadership is lost (kvctl could not keep its lease alive, or the lease was
    revoked) kvctl says so, sends COMMAND SIGTERM, then SIGKILL (see --kill-after), and
    exits with status 75. Signals are passed on to COMMAND as by 'kvctl lock', whose
    help lists the exit statuses.

    Without VALUE: the leader's value as stored (exit status 3 if there is no leader);
    with --observe one line per change ('(no leader)' when there is none; --json: one
    JSON object per line), like 'etcdctl elect --listen NAME'.
    """
    if observe:
        if value is not None or command is not None:
            fail(EXIT_USAGE, "elect: --observe takes no VALUE and no command")
        _observe(context, name)
        return
    if value is None:
        if command is not None:
            fail(EXIT_USAGE, "elect: a command needs a VALUE to campaign with")
        _print_leader(context, name)
        return
    if command is not None and not command:
        fail(EXIT_USAGE, "elect: no command after '--'")
    _exit(_campaign(context, name, value, ttl, kill_after, command))


def _print_leader(context: CommandContext, name: str) -> None:
    leader = Election(context.client, name).leader()
    if leader is None:
        fail(EXIT_NOT_FOUND, f"election {name!r} has no leader")
    if context.json:
        click.echo(output.to_json(leader_document(name, leader)))
        return
    stream = sys.stdout.buffer
    stream.write(leader.value)
    if (context.in_shell or sys.stdout.isatty()) and not leader.value.endswith(b"\n"):
        stream.write(b"\n")
    stream.flush()


def _observe(context: CommandContext, name: str) -> None:
    changes = Election(context.client, name).observe()
    try:
        for leader in changes:
            if context.json:
                click.echo(orjson.dumps(leader_document(name, leader)).decode())
            else:
                click.echo("(no leader)" if leader is None else _value_line(leader.value))
    except KeyboardInterrupt:
        return  # Ctrl-C is how --observe is meant to end
    finally:
        if isinstance(changes, Generator):
            changes.close()  # and so its watch


def _campaign(
    context: CommandContext,
    name: str,
    value: str,
    ttl: float,
    kill_after: float,
    command: tuple[str, ...] | None,
) -> int:
    supervisor = Supervisor(f"leadership of {name!r}", kill_after)
    election = Election(context.client, name, ttl=ttl, on_lost=supervisor.on_lost)
    with supervisor.signals():
        try:
            try:
                revision = election.campaign(value)
            except LockLostError as exc:
                fail(EXIT_LOST, f"candidacy in {name!r} lost while campaigning: {exc.message}")
            # The leader is this candidate, unless its lease was lost already.
            leader = election.leader()
            if leader is None or leader.revision != revision:
                supervisor.on_lost("its key is gone")
                return supervisor.hold()
            emit(
                context,
                {"name": name, "key": leader.key, "value": value, "revision": revision},
                lambda: f"elected (revision {revision})",
            )
            if command is None:
                return supervisor.hold()
            env = {
                **os.environ,
                "RAFTKV_ELECTION_KEY": leader.key,
                "RAFTKV_ELECTION_REVISION": str(revision),
            }
            return supervisor.run(command, env)
        except _Interrupted as exc:  # while campaigning, or just after the election
            return exit_status(-exc.signum)
        finally:
            supervisor.phase = "leaving"
            _leave(election.resign, "resign", ttl)
