"""The one top-level handler of every eqdeploy command (click only, no torch).

``HandledCommand`` (and ``HandledGroup``, whose commands are all ``HandledCommand``) runs a
command and turns every failure into one line on stderr and an exit
code (``eqdeploy.errors``): ``EqdeployError`` -> its message and code (2 bad input, 1 a
failed check); SIGTERM/SIGINT -> "interrupted", 128 + signal; ``OSError``/``MemoryError``
-> the cause, 2; anything else -> "internal error", 3. No traceback reaches the user unless
``--debug`` (on the group or any command) or ``EQDEPLOY_DEBUG=1`` asks for it. Click's own
usage errors keep click's format and exit 2.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator

import click

from eqdeploy.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EqdeployError, Interrupted

DEBUG_ENV = "EQDEPLOY_DEBUG"
_DEBUG = "eqdeploy.debug"
MAX_MESSAGE = 600


def _set_debug(ctx: click.Context, _param, value: bool) -> bool:
    if value:
        ctx.meta[_DEBUG] = True
    return value


debug_option = click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
                            callback=_set_debug,
                            help="On failure, show the full traceback too.")


def one_line(text: str) -> str:
    """A message on one line (library messages embedded in ours may hold newlines)."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Interrupted`` (as SIGINT raises KeyboardInterrupt), so ``finally``
    blocks (staging clean-up) run when a CI job is cancelled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, _frame):
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _describe(e: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for a failure that is not an EqdeployError."""
    if isinstance(e, Interrupted | KeyboardInterrupt):
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        return (f"interrupted by {signal.Signals(signum).name} -- nothing half-written was "
                "left in the output folder; run the command again", 128 + signum)
    if isinstance(e, MemoryError):
        return ("out of memory -- use a smaller --input-shape or fewer probes", EXIT_BAD_INPUT)
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        return (f"cannot read or write{where} ({e.strerror or e}) -- check the path, its "
                "permissions and the free space", EXIT_BAD_INPUT)
    first = (str(e).strip().splitlines() or [""])[0]
    return (f"internal error ({type(e).__name__}: {first}) -- this is a bug in eqdeploy: run "
            "again with --debug and report the traceback", EXIT_INTERNAL)


def _handled(ctx: click.Context, call):
    try:
        with sigterm_raises():
            return call()
    except (click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except (Exception, KeyboardInterrupt, Interrupted) as e:  # noqa: BLE001 - the handler
        if isinstance(e, EqdeployError):
            message, code = str(e), e.exit_code
        else:
            message, code = _describe(e)
        if ctx.meta.get(_DEBUG) or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exception(e, file=sys.stderr)
        click.echo(f"Error: {one_line(message)}", err=True)
        ctx.exit(code)


class HandledCommand(click.Command):
    """A click command that fails with one line and a documented exit code, also when it
    runs on its own (``python -m eqdeploy.harness.cli``, tests)."""

    def invoke(self, ctx: click.Context):
        return _handled(ctx, lambda: super(HandledCommand, self).invoke(ctx))


class HandledGroup(click.Group):
    """A click group whose commands are ``HandledCommand``s (and whose own failures are
    handled the same way)."""

    command_class = HandledCommand

    def invoke(self, ctx: click.Context):
        return _handled(ctx, lambda: super(HandledGroup, self).invoke(ctx))
