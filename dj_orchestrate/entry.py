"""What every entry point does first (a command, a worker, the dashboard): open the
pipeline and the database it names, and say what was wrong in one line.

Importing this module imports no DataJoint: the command reports a bad DataJoint
configuration with ``report`` before DataJoint is imported."""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

from . import db, pipeline
from .errors import UsageError

if TYPE_CHECKING:
    from .jobs import Restriction


def report(err: UsageError, debug: bool) -> None:
    """A UsageError as one line and a hint on stderr (and, with --debug, what caused it)."""
    if debug:
        import traceback

        traceback.print_exception(err.__cause__ or err, file=sys.stderr)
    click.echo(f"dj-orchestrate: error: {err.message}", err=True)
    if err.hint:
        click.echo(f"  hint: {err.hint}", err=True)


@contextlib.contextmanager
def reported(debug: bool = False) -> Iterator[None]:
    """UsageError (or a privilege the database refused) → one line on stderr, exit 2."""
    try:
        yield
    except UsageError as err:
        report(err, debug)
        sys.exit(err.exit_code)
    except Exception as err:
        from datajoint.errors import AccessError

        if not isinstance(err, AccessError):
            raise
        detail = str(err.args[1] if len(err.args) > 1 and err.args[1] else err).splitlines()[0]
        usage = UsageError(f"the database refused: {detail}",
                           "grant that privilege to the database user, or run this as a user who has it")
        usage.__cause__ = err
        report(usage, debug)
        sys.exit(usage.exit_code)


def friendly(f: Callable) -> Callable:
    """A command whose errors are ``reported`` (with a traceback under --debug)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with reported(bool(click.get_current_context().find_root().params.get("debug"))):
            return f(*args, **kwargs)

    return wrapper


def open_pipeline(spec: str, tables: tuple[str, ...] | list[str], key_json: str | None,
                  warn: bool = False) -> tuple[db.Target, list[pipeline.TableInfo], Restriction]:
    """Validate what can be validated offline, then connect, import and select."""
    from .jobs import Restriction  # (imports DataJoint)

    pipeline.check_spec(spec)
    keys = pipeline.parse_keys(key_json)
    target = db.connect()
    module = pipeline.load(spec)
    infos = pipeline.select(pipeline.discover(module), tables)
    if warn:
        warn_hidden(infos)
    return target, infos, Restriction(pipeline.check_key_attributes(keys, infos))


def warn_hidden(infos: list[pipeline.TableInfo]) -> None:
    """A make that reads a table no foreign key links it to: it is ordered after that
    table, and the user should declare the dependency."""
    for t in infos:
        for other in sorted(t.hidden):
            click.echo(f"dj-orchestrate: warning: {t.name}'s make reads {other}, which no foreign key links it to; "
                       f"{t.name} runs after {other} (declare `-> {other}` in {t.name} to say so)", err=True)
        for other in t.dropped:
            click.echo(f"dj-orchestrate: warning: {t.name}'s make reads {other}, which runs after {t.name} (a foreign "
                       f"key or another such read says so); {t.name} does not wait for {other}", err=True)
