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
    help="The pg_probackup catalog: a directory, or s3://BUCKET/PREFIX (default: "
    "$BACKUP_PATH).",
)


def object_store_options(func: F) -> F:
    """--s3-endpoint, --s3-region, --cache-dir, --cache-size: applied (over the
    configuration's [store] section) to every object store this process opens."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pbkfs.storage.settings import configure

        overrides = {key: kwargs.pop(name) for key, name in (
            ("endpoint", "s3_endpoint"), ("region", "s3_region"), ("cache_dir", "cache_dir"),
            ("cache_size_mb", "cache_size"))}
        configure(store_config(kwargs.get("config_file"), overrides))
        return func(*args, **kwargs)

    for option in reversed((
        click.option("--s3-endpoint", metavar="URL", default=None,
                     help="S3 endpoint for s3:// catalogs (default: store.endpoint of the "
                     "config, else $AWS_ENDPOINT_URL; http:// works)."),
        click.option("--s3-region", default=None,
                     help="S3 region (default: store.region, else $AWS_REGION)."),
        click.option("--cache-dir", default=None, type=click.Path(path_type=str),
                     help="Local cache of s3:// bytes, shared by every mount and command "
                     "(default: store.cache_dir of the config)."),
        click.option("--cache-size", type=click.IntRange(min=1), default=None, metavar="MIB",
                     help="Bound of that cache in MiB (default: store.cache_size_mb)."),
    )):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def store_config(config_file: str | None, overrides: dict[str, Any]) -> Any:
    """The configuration's [store] section with the flags that were given applied."""
    import msgspec

    from pbkfs.config import load_config

    cfg = load_config(config_file).store
    given = {k: v for k, v in overrides.items() if v is not None}
    if "cache_dir" in given:
        import os

        given["cache_dir"] = os.path.abspath(given["cache_dir"])
    return msgspec.structs.replace(cfg, **given)


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
