"""The network clock: an hour's content is the same for every arrival order within the lateness
bound; hours close as soon as their members reported; a silent member delays its network only
until it drops out."""

from __future__ import annotations

import random

import pytest

from pm25.network import ClosedHour, NetworkClock
from pm25.schema import Reading

STATIONS = ["a", "b", "c", "d", "e", "f"]


def network_readings(seed: int, hours: int = 80) -> list[Reading]:
    """Six stations with random gaps; 'e' joins late, 'f' stops early; some identical duplicates."""
    rng = random.Random(seed)
    out = []
    for h in range(1000, 1000 + hours):
        for s in STATIONS:
            if (s == "e" and h < 1030) or (s == "f" and h > 1040) or rng.random() < 0.1:
                continue
            r = Reading(s, h, pm25=round(rng.uniform(1, 300), 1), wind_direction=rng.choice(["N", "SW", "calm"]))
            out.append(r)
            if rng.random() < 0.05:
                out.append(r)  # an at-least-once duplicate
    return out


def arrival_order(readings: list[Reading], lateness: int, seed: int) -> list[Reading]:
    """A random order in which every reading for hour h arrives before any for h + lateness."""
    rng = random.Random(seed)
    keyed = [(r.hour + rng.uniform(0, lateness - 1e-9), i, r) for i, r in enumerate(readings)]
    return [r for _, _, r in sorted(keyed)]


def replay(clock: NetworkClock, order: list[Reading], stored: bool = False):
    """Hour -> content, and for every reading the context it is forecast with (the content of
    its hour when that hour closes, or at once when it is closed already). ``stored``: the clock
    goes through its stored form after every reading."""
    contents: dict[int, dict[str, Reading]] = {}
    waiting: dict[int, list[Reading]] = {}
    contexts: dict[tuple[str, int], dict[str, Reading] | None] = {}
    late = 0
    for r in order:
        offered = clock.offer(r)
        if stored:  # the worker keeps the clock as bytes in its table: it must come back the same
            clock = NetworkClock.from_bytes(clock.to_bytes())
        late += offered.late
        for c in offered.closed:
            contents[c.hour] = c.values
            for w in waiting.pop(c.hour, []):
                contexts[(w.station_id, w.hour)] = c.values
        if offered.hour_closed:
            kept = clock.content(r.hour)
            contexts[(r.station_id, r.hour)] = kept.values if kept else None
        else:
            waiting.setdefault(r.hour, []).append(r)
    nonempty = {h: c for h, c in contents.items() if c}
    normalised = {k: (v or None) for k, v in contexts.items()}  # no content kept == empty content
    return nonempty, normalised, waiting, late


@pytest.mark.parametrize("lateness", [1, 2, 3])
def test_contents_and_contexts_do_not_depend_on_arrival_order_within_the_bound(lateness):
    readings = network_readings(seed=lateness)
    reference = replay(NetworkClock(lateness, 12), readings)
    assert reference[3] == 0
    assert len(reference[0]) > 60  # most hours have content: the test compares something
    for seed in range(25):
        got = replay(NetworkClock(lateness, 12), arrival_order(readings, lateness, seed), stored=seed % 2 == 0)
        assert got[0] == reference[0], f"contents differ for order {seed}"
        assert got[1] == reference[1], f"contexts differ for order {seed}"
        assert got[3] == 0


def test_in_order_hours_close_when_their_last_member_reports():
    clock = NetworkClock(lateness_hours=2, active_hours=6)
    for h in range(100, 110):
        for s in ("a", "b"):
            clock.offer(Reading(s, h, pm25=1.0))
    assert clock.closed_through == 109
    offered = clock.offer(Reading("a", 110, pm25=1.0))
    assert offered.closed == [] and not offered.hour_closed  # waits for b
    offered = clock.offer(Reading("b", 110, pm25=1.0))
    assert [c.hour for c in offered.closed] == [110] and not offered.closed[0].by_watermark
    assert sorted(offered.closed[0].values) == ["a", "b"]


def test_a_silent_member_delays_its_network_by_the_lateness_until_it_drops_out():
    clock = NetworkClock(lateness_hours=2, active_hours=6)
    for h in range(100, 110):
        for s in ("a", "b"):
            clock.offer(Reading(s, h, pm25=1.0))
    closed_by: dict[int, int] = {}  # hour -> the hour of the reading that closed it
    for h in range(110, 125):  # b falls silent
        for c in clock.offer(Reading("a", h, pm25=1.0)).closed:
            closed_by[c.hour] = h
    # b was last seen at 109: a member of hours up to 109 + 6 = 115; those close by the watermark
    # (2 hours late); 116 waits behind 115; later hours close at once
    assert [u for u in range(110, 116) if closed_by[u] == u + 2] == list(range(110, 116))
    assert closed_by[116] == 117
    assert all(closed_by[u] == u for u in range(117, 123))


def test_a_reading_that_breaks_the_bound_is_late_and_still_gets_a_context():
    clock = NetworkClock(lateness_hours=1, active_hours=4)
    for h in range(10, 15):
        clock.offer(Reading("a", h, pm25=1.0))
        if h != 13:
            clock.offer(Reading("b", h, pm25=1.0))
    offered = clock.offer(Reading("b", 13, pm25=1.0))  # 13 closed by the watermark without it
    assert offered.late and offered.hour_closed
    kept = clock.content(13)
    assert isinstance(kept, ClosedHour) and kept.by_watermark and list(kept.values) == ["a"]


def test_a_jump_in_event_time_is_cheap_and_state_stays_bounded():
    clock = NetworkClock(lateness_hours=2, active_hours=24)
    clock.offer(Reading("a", 0, pm25=1.0))
    clock.offer(Reading("a", 10**7, pm25=1.0))  # years later: no per-hour work
    assert clock.closed_through == 10**7
    assert len(clock.seen) <= 24 and len(clock.recent) <= 24 and not clock.pending


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        NetworkClock(lateness_hours=0)
    with pytest.raises(ValueError):
        NetworkClock(lateness_hours=3, active_hours=3)


def test_the_stored_clock_is_the_plain_json_document_whatever_parts_were_encoded_before():
    """Closed hours are encoded once (ClosedHour.stored) and spliced into every later save: the
    bytes must equal the whole document encoded at once (NaN as null, keys sorted), at every step."""
    import math

    import orjson

    def plain(clock: NetworkClock) -> bytes:
        nulls = lambda d: {k: None if math.isnan(v) else v for k, v in d.items()}  # noqa: E731
        doc = {
            "v": 1,
            "l": clock.lateness_hours,
            "a": clock.active_hours,
            "k": clock.keep_hours,
            "c": clock.closed_through,
            "n": clock.newest_hour,
            "h": [clock.closed_hours, clock.closed_by_watermark],
            "p": {str(h): nulls(v) for h, v in clock.pending.items()},
            "s": {str(h): sorted(v) for h, v in clock.seen.items()},
            "r": {
                str(h): [nulls(c.values), sorted(c.members), c.by_watermark, list(c.reported)]
                for h, c in clock.recent.items()
            },
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    clock = NetworkClock(2, 12)  # goes through its stored form at every reading (nothing cached)
    kept = NetworkClock(2, 12)  # saved at every reading, never read back (its encoded parts kept)
    readings = arrival_order(network_readings(seed=7, hours=40), 2, seed=3)
    readings[5] = Reading(readings[5].station_id, readings[5].hour)  # a reading without PM2.5 (NaN)
    checked = 0
    for r in readings:
        clock.offer(r)
        kept.offer(r)
        stored = clock.to_bytes()
        assert stored == plain(clock) == kept.to_bytes() == plain(kept)
        clock = NetworkClock.from_bytes(stored)
        checked += bool(clock.recent)
    assert checked > 100  # most saves carried closed hours
