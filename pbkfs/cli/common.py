"""Options and error handling shared by every subcommand."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pbkfs.errors import PbkfsError

F = TypeVar("F", bound=Callable[..., Any])

store_option = click.option(
    "-B", "--backup-path", "store", envvar="BACKUP_PATH", required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="The pg_probackup catalog (default: $BACKUP_PATH).",
)


def reports_errors(func: F) -> F:
    """Turn the project's errors into one `pbkfs: error: ...` line and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PbkfsError as exc:
            click.echo(f"pbkfs: error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
