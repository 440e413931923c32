"""Recovery targets with pg_probackup restore's option names and meanings.

`--recovery-target=immediate|latest`, `--recovery-target-time`, `-xid`,
`-lsn`, `-name` (at most one of them), `--recovery-target-inclusive`,
`--recovery-target-timeline` and `--recovery-target-action`. Parsing checks
every value up front so a mount never starts a server that would reject its
own settings. Times accept fractional seconds and any UTC offset; a time
without an offset is local time of this host (as pg_probackup reads it), and
is written to PostgreSQL with an explicit offset so the server's `timezone`
setting cannot move it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from pbkfs.catalog.lsn import format_lsn, parse_lsn
from pbkfs.errors import UsageError

STOPS = ("immediate", "latest")
ACTIONS = ("pause", "promote", "shutdown")
TRUE_WORDS = ("true", "on", "yes", "1", "t", "y")
FALSE_WORDS = ("false", "off", "no", "0", "f", "n")
MAX_NAME = 63  # PostgreSQL's MAXFNAMELEN - 1 for restore point names
MAX_XID = (1 << 64) - 1

TARGET_OPTIONS = ("--recovery-target", "--recovery-target-name", "--recovery-target-time",
                  "--recovery-target-xid", "--recovery-target-lsn")


@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops and what the server does then. All None: no target given."""

    stop: str | None = None  # "immediate" or "latest"
    time: datetime | None = None  # aware
    xid: int | None = None
    lsn: int | None = None
    name: str | None = None
    inclusive: bool | None = None  # None: not given (PostgreSQL's default, true)
    timeline: str | None = None  # "current", "latest" or a decimal timeline id
    action: str | None = None  # "pause", "promote", "shutdown"; None: not given

    @property
    def kind(self) -> str | None:
        """"immediate", "latest", "time", "xid", "lsn", "name", or None."""
        if self.stop:
            return self.stop
        for kind in ("time", "xid", "lsn", "name"):
            if getattr(self, kind) is not None:
                return kind
        return None

    @property
    def time_text(self) -> str | None:
        """The time as written to recovery_target_time (ISO, explicit offset)."""
        return None if self.time is None else self.time.isoformat(sep=" ")

    def as_options(self) -> dict[str, str]:
        """parse_target() keyword arguments giving this target back (to store it, e.g. in a
        mount's state, and compare it on remount)."""
        out: dict[str, str] = {}
        if self.stop:
            out["target"] = self.stop
        if self.time_text is not None:
            out["time"] = self.time_text
        if self.xid is not None:
            out["xid"] = str(self.xid)
        if self.lsn is not None:
            out["lsn"] = format_lsn(self.lsn)
        if self.name is not None:
            out["name"] = self.name
        if self.inclusive is not None:
            out["inclusive"] = "true" if self.inclusive else "false"
        if self.timeline:
            out["timeline"] = self.timeline
        if self.action:
            out["action"] = self.action
        return out

    def with_defaults(self, stop: str, action: str) -> RecoveryTarget:
        return replace(self, stop=stop, action=self.action or action)

    def describe(self) -> str:
        kind = self.kind
        if kind is None:
            text = "no recovery target"
        elif kind in STOPS:
            text = f"recovery target {kind}"
        elif kind == "time":
            text = f"recovery target time '{self.time_text}'"
        elif kind == "xid":
            text = f"recovery target xid {self.xid}"
        elif kind == "lsn":
            assert self.lsn is not None
            text = f"recovery target LSN {format_lsn(self.lsn)}"
        else:
            text = f"recovery target name '{self.name}'"
        if self.inclusive is not None:
            text += " (inclusive)" if self.inclusive else " (exclusive)"
        if self.timeline:
            text += f", timeline {self.timeline}"
        if self.action:
            text += f", then {self.action}"
        return text


def parse_time(text: str) -> datetime:
    """A point in time: ISO date and time, fractional seconds, any offset (`Z`, `+03`,
    `+05:30`, `-0800`, ` UTC`); without an offset it is this host's local time."""
    t = " ".join(text.strip().split())
    upper = t.upper()
    for zone in (" UTC", " GMT", "UTC", "GMT"):
        if upper.endswith(zone) and len(t) > len(zone):
            t = t[: -len(zone)].rstrip() + "+00:00"
            break
    try:
        value = datetime.fromisoformat(t)
    except ValueError:
        raise UsageError(f"--recovery-target-time: cannot read {text!r} as a time "
                         "(use e.g. '2024-05-01 14:05:00.25+03')") from None
    if value.tzinfo is None:
        value = value.astimezone()  # local time of this host, made explicit
    return value


def _parse_bool(text: str, option: str) -> bool:
    v = text.strip().lower()
    if v in TRUE_WORDS:
        return True
    if v in FALSE_WORDS:
        return False
    raise UsageError(f"{option}: {text!r} is not a boolean (true or false)")


def parse_target(
    *,
    target: str | None = None,
    time: str | None = None,
    xid: str | None = None,
    lsn: str | None = None,
    name: str | None = None,
    inclusive: str | bool | None = None,
    timeline: str | None = None,
    action: str | None = None,
) -> RecoveryTarget:
    """Check pg_probackup's recovery options (as strings) and build the target."""
    given = [opt for opt, value in zip(TARGET_OPTIONS, (target, name, time, xid, lsn),
                                       strict=True) if value is not None]
    if len(given) > 1:
        raise UsageError("at most one of " + ", ".join(TARGET_OPTIONS) +
                         f" can be given (got {', '.join(given)})")
    out = RecoveryTarget()
    if target is not None:
        if target not in STOPS:
            raise UsageError(f"--recovery-target: {target!r} is not 'immediate' or 'latest'")
        out = replace(out, stop=target)
    if time is not None:
        out = replace(out, time=parse_time(time))
    if xid is not None:
        if not xid.strip().isdigit() or not 0 < int(xid) <= MAX_XID:
            raise UsageError(f"--recovery-target-xid: {xid!r} is not a transaction id "
                             "(a positive integer)")
        out = replace(out, xid=int(xid))
    if lsn is not None:
        try:
            out = replace(out, lsn=parse_lsn(lsn))
        except ValueError:
            raise UsageError(f"--recovery-target-lsn: {lsn!r} is not an LSN "
                             "(like 0/1A2B3C4)") from None
    if name is not None:
        if not name or len(name.encode()) > MAX_NAME or "\n" in name or "\0" in name:
            raise UsageError(f"--recovery-target-name: {name!r} is not a restore point name "
                             f"(1 to {MAX_NAME} bytes, one line)")
        out = replace(out, name=name)
    if inclusive is not None:
        value = inclusive if isinstance(inclusive, bool) else \
            _parse_bool(inclusive, "--recovery-target-inclusive")
        if out.kind not in ("time", "xid", "lsn"):
            raise UsageError("--recovery-target-inclusive applies only with "
                             "--recovery-target-time, --recovery-target-xid or "
                             "--recovery-target-lsn")
        out = replace(out, inclusive=value)
    if timeline is not None:
        tl = timeline.strip().lower()
        if tl not in ("current", "latest") and not (tl.isdigit() and 0 < int(tl) < 1 << 32):
            raise UsageError(f"--recovery-target-timeline: {timeline!r} is not 'current', "
                             "'latest' or a timeline id")
        out = replace(out, timeline=str(int(tl)) if tl.isdigit() else tl)
    if action is not None:
        if action not in ACTIONS:
            raise UsageError(f"--recovery-target-action: {action!r} is not one of "
                             f"{', '.join(ACTIONS)}")
        if out.kind is None:
            raise UsageError("--recovery-target-action needs a recovery target (one of " +
                             ", ".join(TARGET_OPTIONS) + ")")
        out = replace(out, action=action)
    return out
