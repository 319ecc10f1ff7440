"""How a command ends when something goes wrong: one line on stderr and an exit status.

A :class:`~geoseg.errors.GeosegError` becomes ``geoseg: error: ...`` and exit status 1, Ctrl-C exit
status 130 (for ``geoseg run``, with the command that resumes the run), and a warning one
``geoseg: warning: ...`` line. Click's own usage errors (exit status 2) pass through untouched.
"""

from __future__ import annotations

import functools
import shlex
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click

from geoseg.errors import GeosegError

F = TypeVar("F", bound=Callable[..., Any])


def _echo_warning(
    message: Any, category: Any, filename: Any, lineno: Any, file: Any = None, line: Any = None
) -> None:
    click.echo(f"geoseg: warning: {message}", err=True)


def handle_errors(fn: F) -> F:
    """Turn geoseg errors into clean CLI errors (no traceback), and Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _echo_warning
        try:
            return fn(*args, **kwargs)
        except GeosegError as exc:
            click.echo(f"geoseg: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo(f"geoseg: {_interrupted_message()}", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _interrupted_message() -> str:
    """What to say on Ctrl-C: for ``geoseg run``, the command that resumes the run."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.command.name != "run":
        return "interrupted; no complete output was written"
    argv = sys.argv[1:]
    if "run" not in argv:  # called from Python (e.g. click's test runner), not from a shell
        return "interrupted; resume with the same geoseg run command plus --resume"
    args = [a for a in argv[argv.index("run") :] if a != "--resume"]
    return f"interrupted; resume with: geoseg {shlex.join([*args, '--resume'])}"
