"""The repartition stage's merge (stream_processor.router): whatever the order in which the input
partitions are read, what it releases keeps each partition's order and the lateness bound."""

from __future__ import annotations

import random

from pm25.schema import Reading, reading_to_json
from pm25.stations import Station
from stream_processor.networks import Networks
from stream_processor.router import EventTimeMerge, route_of

L = 2  # the network lateness bound the inputs keep


def _partition(rng: random.Random, p: int, stations: int, hours: int) -> list[tuple[int, str]]:
    """A partition's items within the bound: a reading of hour h may come after some of hour h + 1,
    never after one of hour h + 2."""
    items = [(h, f"p{p}s{s}h{h}") for h in range(hours) for s in range(stations)]
    return sorted(items, key=lambda it: it[0] + rng.uniform(0, 1.5))


def _outside_bound(hours: list[int]) -> int:
    """How many items come after an item at least L hours newer."""
    newest, count = -(10**9), 0
    for h in hours:
        count += h <= newest - L
        newest = max(newest, h)
    return count


def _read_in_random_chunks(rng: random.Random, parts: dict[int, list[tuple[int, str]]], merge: EventTimeMerge):
    """Add the partitions' items in random chunks, one partition starting late (a backlog), and
    release after every chunk; yields (read order, released order)."""
    read: list[tuple[int, str]] = []
    out: list[tuple[int, str]] = []
    at = dict.fromkeys(parts, 0)
    late = rng.choice(list(parts))
    total = sum(len(v) for v in parts.values())
    while any(at[p] < len(parts[p]) for p in parts):
        ready = [p for p in parts if at[p] < len(parts[p]) and (p != late or len(read) > total // 2)]
        p = rng.choice(ready or [late])
        chunk = parts[p][at[p] : at[p] + rng.randint(1, 25)]
        at[p] += len(chunk)
        for hour, item in chunk:
            merge.add(p, hour, (hour, item))
            read.append((hour, item))
        pending = {q for q in parts if at[q] < len(parts[q])}
        out.extend(item for _, item in merge.release(pending))
    return read, out


def test_the_merge_keeps_the_bound_and_each_partition_s_order_whatever_the_read_order():
    broke_read_order = 0
    for seed in range(40):
        rng = random.Random(seed)
        parts = {p: _partition(rng, p, stations=rng.randint(1, 4), hours=30) for p in range(rng.randint(2, 5))}
        merge: EventTimeMerge = EventTimeMerge()
        read, out = _read_in_random_chunks(rng, parts, merge)
        assert sorted(out) == sorted(read)  # every item, once: nothing held when no partition is pending
        assert _outside_bound([h for h, _ in out]) == 0, seed
        broke_read_order += _outside_bound([h for h, _ in read]) > 0
        for p, items in parts.items():  # each partition's order kept
            assert [it for it in out if it[1].startswith(f"p{p}s")] == items
    assert broke_read_order >= 30  # the read orders themselves break the bound: the test can fail


def test_a_pending_partition_that_has_released_nothing_holds_every_hour_back():
    merge: EventTimeMerge = EventTimeMerge()
    merge.add(0, 5, "a5")
    assert merge.release(pending={0, 1}) == []  # 1 may still hold hour 3
    assert merge.release(pending={0}) == [(0, "a5")]  # 1 caught up: nothing more from it for now
    merge.add(1, 5, "b5")
    merge.add(0, 6, "a6")
    assert merge.release(pending={0, 1}) == [(1, "b5")]  # 0's newest is 5: 6 waits for 1's next
    merge.add(1, 6, "b6")
    assert [item for _, item in merge.release(pending={0, 1})] == ["a6", "b6"]


def test_messages_that_are_not_readings_go_out_at_their_queue_s_head_and_revoked_partitions_are_dropped():
    merge: EventTimeMerge = EventTimeMerge()
    merge.add(0, None, "bad")
    merge.add(0, 9, "a9")
    merge.add(1, 3, "b3")
    assert merge.release(pending={0, 1}) == [(0, "bad"), (1, "b3")]
    merge.forget([0])
    assert merge.waiting(0) == 0
    assert merge.release(pending={1}) == []


def test_route_of_keys_a_reading_by_its_station_s_network_and_keeps_a_bad_message_s_key():
    """A message that is not a reading of the station its key names keeps its key (and no hour):
    the worker dead-letters it with its reason, as without the router."""

    def station(sid: str, network: str) -> Station:
        return Station(station_id=sid, name=sid, latitude=40.0, longitude=116.0, network=network)

    networks = Networks([station("a", "north"), station("b", "north"), station("c", "solo")], lateness_hours=L)
    value = reading_to_json(Reading("a", 100, pm25=5.0))
    assert route_of(value, b"a", networks) == (100, b"north")
    lone = reading_to_json(Reading("c", 101, pm25=5.0))  # alone in its network: forecast alone
    assert route_of(lone, b"c", networks) == (101, b"c")
    unknown = reading_to_json(Reading("z", 102, pm25=5.0))
    assert route_of(unknown, b"z", networks) == (102, b"z")
    assert route_of(b"{not json", b"k", networks) == (None, b"k")
    assert route_of(value, None, networks) == (100, b"north")  # no key: keyed by its network
    assert route_of(value, b"b", networks) == (None, b"b")  # another station's key: key_mismatch
    # keyed by its network already: merged like any reading (not passed through out of order)
    assert route_of(value, b"north", networks) == (100, b"north")
