"""A network's event-time clock: when an hour's readings are all in, deterministically.

Neighbour features need the network's readings of an hour. To make the result independent of the
order in which those readings arrive, a network *closes* its hours one by one, in event-time
order, and an hour's content is fixed when it closes. Hour ``u`` closes at the first of:

* **all members reported**: every *member* of ``u`` has a reading for ``u`` (and the watermark
  reached ``u``, so the members are known); or
* **the watermark passed**: the watermark reached ``u + lateness_hours`` (by default the newest
  hour the network has seen; a worker reading several partitions passes the least newest hour of
  the partitions still behind, stream_processor.processor).

The *members* of ``u`` are the stations with a reading at any hour in
``[u - active_hours, u - lateness_hours]``, and the *content* of ``u`` is the members' PM2.5
values of ``u`` (NaN for a reading without one; the newest arrival wins for a station that sent
two). A reading from a station that is not a member (new, or back after more than
``active_hours``) does not enter the content of its hour: it is forecast with the content as
context, and becomes a member ``lateness_hours`` later.

**The guarantee.** Call arrivals *within the lateness bound* when every reading for hour ``h``
arrives before any reading for hour ``h + lateness_hours`` or later. Then the content of every
hour, and so every neighbour feature computed from contents, is the same for every arrival
order. Why: hour ``u`` closes only when a reading for an hour ``>= u`` has arrived, by which time
every reading for hours ``<= u - lateness_hours`` is in, so the members of ``u`` are known; early
closing waits for all of them, and closing by the watermark comes after every reading of ``u``.
(``tests/unit/test_network.py`` checks it over random orders.) A reading that breaks the bound
and arrives for a closed hour is counted as ``late``; its station still gets its forecast, with
the closed content as context.

The cost: a station's forecast for ``u`` waits until the network's other members have reported
``u``; a member that stops reporting delays its network's hours by up to ``lateness_hours`` of
event time, until it drops out of the members ``active_hours - lateness_hours`` hours later.

The clock is pure (no I/O, no wall clock) and its state is a small value, so a worker can keep
one per network in a table and the backtest runs the same code.

>>> clock = NetworkClock(lateness_hours=2, active_hours=6)
>>> [c.hour for c in clock.offer(Reading("a", 10, pm25=5.0)).closed]   # a new network: no members
[10]
>>> clock.offer(Reading("b", 10, pm25=7.0)).hour_closed                 # b: not a member, hour 10 closed
True
>>> [c.hour for c in clock.offer(Reading("a", 11, pm25=6.0)).closed]
[11]
>>> [c.hour for c in clock.offer(Reading("a", 12, pm25=6.0)).closed]   # a and b are members of 12 now
[]
>>> closed = clock.offer(Reading("b", 12, pm25=8.0)).closed
>>> [(c.hour, c.values) for c in closed]
[(12, {'a': 6.0, 'b': 8.0})]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import orjson

from pm25.schema import Reading, kept_json

__all__ = ["ClockFormatError", "ClosedHour", "NetworkClock", "Offered"]

#: The stored clock's format (see :meth:`NetworkClock.to_bytes`).
FORMAT = 1


class ClockFormatError(ValueError):
    """Stored clock bytes this code cannot decode."""


@dataclass(frozen=True, slots=True)
class ClosedHour:
    """An hour whose content is final: the members' PM2.5 values (NaN: reported without one), by
    station id (sorted), and every station that had reported the hour when it closed."""

    hour: int
    values: dict[str, float]
    members: frozenset[str]
    by_watermark: bool  # closed because the watermark passed (some member never reported)
    reported: tuple[str, ...] = ()  # sorted: members and non-members
    #: ``log1p`` of each value (the neighbour features' scale, pm25.neighbours), computed once
    logs: dict[str, float] = field(init=False, compare=False, repr=False)
    #: its part of the stored clock, encoded once (a closed hour is final; the clock is saved once
    #: per batch for as long as it keeps the hour)
    stored: orjson.Fragment = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "logs", {sid: log_level(v) for sid, v in self.values.items()})
        doc = [_nulls(self.values), sorted(self.members), self.by_watermark, list(self.reported)]
        object.__setattr__(self, "stored", orjson.Fragment(kept_json(doc, orjson.OPT_SORT_KEYS)))


def log_level(value: float | None) -> float:
    """``log1p`` of a PM2.5 value (negative ones as 0); NaN for a missing one."""
    if value is None or math.isnan(value):
        return math.nan
    return math.log1p(max(value, 0.0))


@dataclass(frozen=True, slots=True)
class Offered:
    """What offering a reading did: the hours it closed (in order) and whether the reading's own
    hour is closed now (its forecast can be issued at once, with that hour's content)."""

    closed: list[ClosedHour]
    hour_closed: bool
    late: bool  # a member's reading for an hour closed without it, or a changed value (bound broken)


@dataclass(slots=True)
class NetworkClock:
    lateness_hours: int = 2
    active_hours: int = 24
    #: the newest closed hour (None before the first reading)
    closed_through: int | None = None
    #: the newest event hour seen
    newest_hour: int | None = None
    #: PM2.5 values of the open hours, by hour then station
    pending: dict[int, dict[str, float]] = field(default_factory=dict)
    #: stations seen per hour, for the hours membership still looks at
    seen: dict[int, set[str]] = field(default_factory=dict)
    #: closed hours kept for context, newest last
    recent: dict[int, ClosedHour] = field(default_factory=dict)
    #: how many closed hours are kept (neighbour features look 3 hours back)
    keep_hours: int = 4
    #: hours closed so far, and how many of them by the watermark (some member never reported)
    closed_hours: int = 0
    closed_by_watermark: int = 0
    #: (hour, its members) of the latest :meth:`members` answer: derived, never stored. A reading
    #: for an hour in that hour's membership range drops it (the next hour to close is asked
    #: again at every reading while its members report, and the range rarely changes meanwhile).
    _members: tuple[int, frozenset[str]] | None = field(default=None, repr=False, compare=False)
    #: each hour's stored list of stations seen, with the count it was encoded at: derived, never
    #: stored (a set only grows, so an unchanged count is an unchanged set; a clock is saved once
    #: per batch and most of its hours' sets no longer change)
    _seen_stored: dict[int, tuple[int, orjson.Fragment]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.lateness_hours < 1:
            raise ValueError("lateness_hours must be >= 1")
        if self.active_hours <= self.lateness_hours:
            raise ValueError("active_hours must be > lateness_hours")

    def members(self, hour: int) -> frozenset[str]:
        """Stations with a reading at an hour in ``[hour - active_hours, hour - lateness_hours]``."""
        cached = self._members
        if cached is not None and cached[0] == hour:
            return cached[1]
        out: set[str] = set()
        for h in range(hour - self.active_hours, hour - self.lateness_hours + 1):
            out |= self.seen.get(h, set())
        members = frozenset(out)
        self._members = (hour, members)
        return members

    def content(self, hour: int) -> ClosedHour | None:
        """The closed content of ``hour`` if it is still kept (the last ``keep_hours`` hours)."""
        return self.recent.get(hour)

    def offer(self, reading: Reading, watermark: int | None = None) -> Offered:
        """Take a reading; close what is ready. ``watermark``: the event hour every source of
        readings has reached (a worker reading several partitions passes the least of their newest
        hours, so a partition that lags behind the others does not make its readings late); by
        default the newest hour this network has seen (one ordered source, as a file)."""
        hour = reading.hour
        if self.closed_through is None:
            # Nothing before the first reading can have members, so starting the clock just before
            # it loses nothing an earlier reading (within the bound) would have added.
            self.closed_through = hour - 1
        self._prune()
        seen = self.seen.setdefault(hour, set())
        if reading.station_id not in seen:
            seen.add(reading.station_id)
            cached = self._members
            if cached is not None and cached[0] - self.active_hours <= hour <= cached[0] - self.lateness_hours:
                self._members = None  # a new member of the cached hour
        self.newest_hour = hour if self.newest_hour is None else max(self.newest_hour, hour)
        late = False
        value = math.nan if reading.pm25 is None else float(reading.pm25)
        if hour > self.closed_through:
            self.pending.setdefault(hour, {})[reading.station_id] = value
        else:
            kept = self.recent.get(hour)
            # a member's reading the content lacks (an identical duplicate is not late)
            late = (
                kept is not None
                and reading.station_id in kept.members
                and not _same(kept.values.get(reading.station_id), value)
            )
        closed = self._close_ready(self.newest_hour if watermark is None else watermark)
        return Offered(closed, hour <= self.closed_through, late)

    def advance(self, watermark: int) -> list[ClosedHour]:
        """Close what the watermark now allows without a new reading of this network (the worker's
        watermark moves with every partition's readings)."""
        if self.closed_through is None or self.newest_hour is None or self.closed_through >= self.newest_hour:
            return []
        self._prune()
        return self._close_ready(watermark)

    def _close_ready(self, watermark: int) -> list[ClosedHour]:
        assert self.closed_through is not None and self.newest_hour is not None
        closed = []
        while self.closed_through < self.newest_hour:
            u = self.closed_through + 1
            by_watermark = watermark >= u + self.lateness_hours
            if by_watermark and u not in self.pending:
                # hours nobody reported: their content is empty whoever the members are; skip
                # them at once (a jump in event time costs nothing per hour)
                following = min((h for h in self.pending if h > u), default=self.newest_hour + 1)
                self.closed_through = min(following, watermark - self.lateness_hours + 1, self.newest_hour + 1) - 1
                continue
            # the members of u are known once every reading for hours <= u - lateness is in: with
            # one ordered source as soon as a reading for u arrived; with several, once every
            # source reached u (the watermark)
            if watermark < u:
                break
            members = self.members(u)
            arrived = self.pending.get(u, {})
            if not (by_watermark or members <= arrived.keys()):
                break
            content = {sid: arrived[sid] for sid in sorted(members & arrived.keys())}
            done = ClosedHour(
                u, content, members, by_watermark and not members <= arrived.keys(), tuple(sorted(arrived))
            )
            self.pending.pop(u, None)
            self.recent[u] = done
            self.closed_through = u
            self.closed_hours += 1
            self.closed_by_watermark += done.by_watermark
            closed.append(done)
        return closed

    def _prune(self) -> None:
        """Forget what no later step can need; called when a step *starts*, so the hours the
        previous step closed keep the contents before them while the caller fills their features
        (a step may close many hours at once, when the watermark jumps: each needs the content of
        1 and 3 hours before it), and a reading for an hour up to ``lateness_hours`` behind the
        newest closed one still finds the contents its features need (as with one ordered source,
        where it closes at once)."""
        assert self.closed_through is not None
        oldest_needed = self.closed_through + 1 - self.active_hours
        for h in [h for h in self.seen if h < oldest_needed]:
            del self.seen[h]
        for h in [h for h in self.recent if h <= self.closed_through - self.keep_hours - self.lateness_hours]:
            del self.recent[h]

    # -- stored form ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The clock as a compact value (JSON, NaN as null), for a worker's table."""
        doc = {
            "v": FORMAT,
            "l": self.lateness_hours,
            "a": self.active_hours,
            "k": self.keep_hours,
            "c": self.closed_through,
            "n": self.newest_hour,
            "h": [self.closed_hours, self.closed_by_watermark],
            "p": {str(h): _nulls(v) for h, v in self.pending.items()},
            "s": self._stored_seen(),
            "r": {str(h): c.stored for h, c in self.recent.items()},
        }
        # orjson: several times faster than json, and the same document (json reads it); kept in a
        # table, so a copy of its own size (kept_json)
        return kept_json(doc, orjson.OPT_SORT_KEYS)

    def _stored_seen(self) -> dict[str, orjson.Fragment]:
        cache = self._seen_stored
        out = {}
        for h, stations in self.seen.items():
            kept = cache.get(h)
            if kept is None or kept[0] != len(stations):
                kept = cache[h] = (len(stations), orjson.Fragment(kept_json(sorted(stations))))
            out[str(h)] = kept[1]
        if len(cache) > len(self.seen):
            for h in [h for h in cache if h not in self.seen]:
                del cache[h]
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> NetworkClock:
        try:
            doc = orjson.loads(data)
            if doc.get("v") != FORMAT:
                raise ClockFormatError(f"clock format {doc.get('v')!r}; this code reads format {FORMAT}")
            return cls(
                lateness_hours=doc["l"],
                active_hours=doc["a"],
                keep_hours=doc["k"],
                closed_through=doc["c"],
                newest_hour=doc["n"],
                closed_hours=doc["h"][0],
                closed_by_watermark=doc["h"][1],
                pending={int(h): _nans(v) for h, v in doc["p"].items()},
                seen={int(h): set(v) for h, v in doc["s"].items()},
                recent={
                    int(h): ClosedHour(int(h), _nans(v), frozenset(m), bool(w), tuple(rep))
                    for h, (v, m, w, rep) in doc["r"].items()
                },
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            if isinstance(err, ClockFormatError):
                raise
            raise ClockFormatError(f"stored clock unreadable: {err}") from err


def _same(a: float | None, b: float) -> bool:
    return a is not None and (a == b or (math.isnan(a) and math.isnan(b)))


def _nulls(values: dict[str, float]) -> dict[str, float | None]:
    return {k: None if math.isnan(v) else v for k, v in values.items()}


def _nans(values: dict[str, float | None]) -> dict[str, float]:
    return {k: math.nan if v is None else float(v) for k, v in values.items()}
