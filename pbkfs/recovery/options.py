"""The recovery-target options as click options, for any command that starts recovery.

Usage::

    @click.command()
    @recovery_target_options
    def mount(..., **kwargs):
        target = target_from_options(kwargs)   # pops the option values from kwargs
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

import click

from pbkfs.recovery.target import RecoveryTarget, parse_target

F = TypeVar("F", bound=Callable[..., Any])

# (option, parameter name, help)
OPTIONS = (
    ("--recovery-target", "recovery_target",
     "'immediate': stop at the backup's consistent point; 'latest': replay all archived WAL."),
    ("--recovery-target-time", "recovery_target_time",
     "Stop at this time (fractional seconds and any UTC offset accepted)."),
    ("--recovery-target-xid", "recovery_target_xid", "Stop at this transaction's commit."),
    ("--recovery-target-lsn", "recovery_target_lsn", "Stop at this WAL position (like 0/1A2B3C4)."),
    ("--recovery-target-name", "recovery_target_name", "Stop at this named restore point."),
    ("--recovery-target-inclusive", "recovery_target_inclusive",
     "true (default): stop just after the target; false: just before it."),
    ("--recovery-target-timeline", "recovery_target_timeline",
     "'current' (default), 'latest' or a timeline id."),
    ("--recovery-target-action", "recovery_target_action",
     "pause (default for explicit targets), promote or shutdown."),
)
PARAMS = tuple(param for _, param, _ in OPTIONS)


def recovery_target_options(func: F) -> F:
    """Add the eight pg_probackup recovery options to a click command."""
    for option, param, help_text in reversed(OPTIONS):
        func = click.option(option, param, default=None, metavar="VALUE", help=help_text)(func)
    return func


def target_from_options(values: MutableMapping[str, Any]) -> RecoveryTarget:
    """Pop the options' values from `values` and parse them (UsageError when invalid)."""
    v = {param: values.pop(param, None) for param in PARAMS}
    return parse_target(
        target=v["recovery_target"], time=v["recovery_target_time"],
        xid=v["recovery_target_xid"], lsn=v["recovery_target_lsn"],
        name=v["recovery_target_name"], inclusive=v["recovery_target_inclusive"],
        timeline=v["recovery_target_timeline"], action=v["recovery_target_action"],
    )
