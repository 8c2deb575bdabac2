"""A network's event-time clock: when an hour's readings are all in, deterministically.

Neighbour features need the network's readings of an hour. To make the result independent of the
order in which those readings arrive, a network *closes* its hours one by one, in event-time
order, and an hour's content is fixed when it closes. Hour ``u`` closes at the first of:

* **all members reported**: every *member* of ``u`` has a reading for ``u``; or
* **the watermark passed**: a reading for hour ``u + lateness_hours`` or later arrived.

The *members* of ``u`` are the stations with a reading at any hour in
``[u - active_hours, u - lateness_hours]``, and the *content* of ``u`` is the members' readings
of ``u`` (the newest arrival wins for a station that sent two). A reading from a station that is
not a member (new, or back after more than ``active_hours``) does not enter the content of its
hour: it is forecast with the content as context, and becomes a member ``lateness_hours`` later.

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
>>> [(c.hour, sorted(c.readings)) for c in closed]
[(12, ['a', 'b'])]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pm25.schema import Reading

__all__ = ["ClosedHour", "NetworkClock", "Offered"]


@dataclass(frozen=True, slots=True)
class ClosedHour:
    """An hour whose content is final: the members' readings, by station id (sorted)."""

    hour: int
    readings: dict[str, Reading]
    members: frozenset[str]
    by_watermark: bool  # closed because the watermark passed (some member never reported)


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
    #: readings of the open hours, by hour then station
    pending: dict[int, dict[str, Reading]] = field(default_factory=dict)
    #: stations seen per hour, for the hours membership still looks at
    seen: dict[int, set[str]] = field(default_factory=dict)
    #: closed hours kept for context, newest last (at most ``active_hours``)
    recent: dict[int, ClosedHour] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lateness_hours < 1:
            raise ValueError("lateness_hours must be >= 1")
        if self.active_hours <= self.lateness_hours:
            raise ValueError("active_hours must be > lateness_hours")

    def members(self, hour: int) -> frozenset[str]:
        """Stations with a reading at an hour in ``[hour - active_hours, hour - lateness_hours]``."""
        out: set[str] = set()
        for h in range(hour - self.active_hours, hour - self.lateness_hours + 1):
            out |= self.seen.get(h, set())
        return frozenset(out)

    def content(self, hour: int) -> ClosedHour | None:
        """The closed content of ``hour`` if it is still kept (the last ``active_hours`` hours)."""
        return self.recent.get(hour)

    def offer(self, reading: Reading) -> Offered:
        hour = reading.hour
        if self.closed_through is None:
            # Nothing before the first reading can have members, so starting the clock just before
            # it loses nothing an earlier reading (within the bound) would have added.
            self.closed_through = hour - 1
        self.seen.setdefault(hour, set()).add(reading.station_id)
        self.newest_hour = hour if self.newest_hour is None else max(self.newest_hour, hour)
        late = False
        if hour > self.closed_through:
            self.pending.setdefault(hour, {})[reading.station_id] = reading
        else:
            kept = self.recent.get(hour)
            # a member's reading the content lacks (an identical duplicate is not late)
            late = (
                kept is not None
                and reading.station_id in kept.members
                and kept.readings.get(reading.station_id) != reading
            )
        closed = self._close_ready()
        self._prune()
        return Offered(closed, hour <= self.closed_through, late)

    def _close_ready(self) -> list[ClosedHour]:
        assert self.closed_through is not None and self.newest_hour is not None
        closed = []
        while self.closed_through < self.newest_hour:
            u = self.closed_through + 1
            by_watermark = self.newest_hour >= u + self.lateness_hours
            if by_watermark and u not in self.pending:
                # hours nobody reported: their content is empty whoever the members are; skip
                # them at once (a jump in event time costs nothing per hour)
                following = min((h for h in self.pending if h > u), default=self.newest_hour + 1)
                self.closed_through = min(following, self.newest_hour - self.lateness_hours + 1) - 1
                continue
            members = self.members(u)
            arrived = self.pending.get(u, {})
            if not (by_watermark or members <= arrived.keys()):
                break
            content = {sid: arrived[sid] for sid in sorted(members & arrived.keys())}
            done = ClosedHour(u, content, members, by_watermark and not members <= arrived.keys())
            self.pending.pop(u, None)
            self.recent[u] = done
            self.closed_through = u
            closed.append(done)
        return closed

    def _prune(self) -> None:
        assert self.closed_through is not None
        oldest_needed = self.closed_through + 1 - self.active_hours
        for h in [h for h in self.seen if h < oldest_needed]:
            del self.seen[h]
        for h in [h for h in self.recent if h <= self.closed_through - self.active_hours]:
            del self.recent[h]
