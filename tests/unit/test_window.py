import numpy as np
import pytest

from pm25.schema import Reading
from pm25.window import StationWindow, TooLate, apply_reading

KW = {"capacity": 30, "lateness_hours": 6, "window_hours": 12}


def r(hour: int, pm: float | None = 10.0) -> Reading:
    return Reading("s", hour, pm25=pm)


def feed(hours, state=None):
    issued = []
    for h in hours:
        state, _, hs = apply_reading(state, r(h, float(h)), **KW)
        issued.append(hs)
    return state, issued


def test_in_order_issues_each_hour_once():
    state, issued = feed(range(100, 110))
    assert issued == [[h] for h in range(100, 110)]
    assert state.newest_hour == 109
    np.testing.assert_array_equal(state.window(109, 3)[:, 0], [107.0, 108.0, 109.0])


def test_gap_hours_stay_missing():
    state, _ = feed([100, 101, 104])
    w = state.window(104, 5)[:, 0]
    assert w[0] == 100.0 and np.isnan(w[2]) and np.isnan(w[3]) and w[4] == 104.0


def test_out_of_order_reading_is_inserted_and_reissues_later_hours():
    state, _ = feed([100, 101, 103, 104])
    state, changed, issued = apply_reading(state, r(102, 102.0), **KW)
    assert changed and issued == [102, 103, 104]
    np.testing.assert_array_equal(state.window(104, 5)[:, 0], [100, 101, 102, 103, 104])


def test_identical_duplicate_changes_nothing_and_reissues_itself():
    state, _ = feed([100, 101, 102])
    before = state.to_bytes()
    state, changed, issued = apply_reading(state, r(101, 101.0), **KW)
    assert not changed and issued == [101] and state.to_bytes() == before


def test_corrected_duplicate_replaces_value():
    state, _ = feed([100, 101, 102])
    state, changed, issued = apply_reading(state, r(101, 55.0), **KW)
    assert changed and issued == [101, 102]
    assert state.window(102, 2)[0, 0] == 55.0


def test_too_late_is_refused():
    state, _ = feed([100, 110])
    with pytest.raises(TooLate):
        apply_reading(state, r(103), **KW)
    apply_reading(state, r(104), **KW)  # exactly at the lateness bound is accepted


def test_shuffled_input_ends_in_the_same_state_as_ordered():
    hours = list(range(200, 240))
    ordered, _ = feed(hours)
    rng = np.random.default_rng(0)
    shuffled = hours[:]
    # local shuffles within the lateness bound
    for i in range(0, len(shuffled) - 4, 4):
        block = shuffled[i : i + 4]
        rng.shuffle(block)
        shuffled[i : i + 4] = block
    state, _ = feed(shuffled + shuffled[-5:])  # plus duplicates
    assert state.to_bytes() == ordered.to_bytes()


def test_bytes_round_trip_and_size():
    state, _ = feed(range(100, 130))
    data = state.to_bytes()
    back = StationWindow.from_bytes(data)
    assert back.to_bytes() == data and back.newest_hour == 129
    # version, newest hour, capacity, last offset, partition; 8 own and 6 network columns per hour
    assert len(data) == 30 * (14 * 4 + 1) + 23


def test_a_format_1_state_is_read_with_the_network_columns_missing():
    import struct

    state, _ = feed(range(100, 130))
    own = state.rows[:, :8].copy()
    old = struct.pack("<BqHq", 1, state.newest_hour, state.capacity, 41) + state.present.tobytes() + own.tobytes()
    back = StationWindow.from_bytes(old)
    assert back.last_offset == 41 and back.partition == -1
    assert np.array_equal(back.rows[:, :8], own, equal_nan=True) and np.isnan(back.rows[:, 8:]).all()


def test_big_jump_resets_buffer():
    state, _ = feed([100, 101])
    state, _, issued = apply_reading(state, r(500), **KW)
    assert issued == [500] and int(state.present.sum()) == 1


def test_unknown_or_damaged_state_format_is_refused():
    import pytest

    from pm25.window import StateFormatError

    data = feed(range(100, 110))[0].to_bytes()
    with pytest.raises(StateFormatError):
        StationWindow.from_bytes(b"\x09" + data[1:])  # a format this code does not know
    with pytest.raises(StateFormatError):
        StationWindow.from_bytes(data[:-4])  # truncated


def _state_in(partition: int, hours) -> bytes:
    state, _ = feed(hours)
    state.partition = partition
    return state.to_bytes()


def test_at_recovery_a_station_s_newer_state_wins_whatever_partition_is_read_last():
    """A station whose readings moved partition (their key changed) has an older state in the old
    partition's changelog and newer ones in the new partition's: the newer wins in either order."""
    from pm25.window import supersedes

    old, new = _state_in(1, range(100, 110)), _state_in(3, range(100, 120))
    assert supersedes(new, old) and not supersedes(old, new)
    # within one partition the log's order holds, even for an older hour (a replaced state)
    assert supersedes(_state_in(1, range(100, 105)), old)
    # partition -1 (unknown) is stored in partition 0, so it is the same log as 0
    assert supersedes(_state_in(-1, range(100, 105)), _state_in(0, range(100, 110)))
    # the same hour in two partitions: the higher partition, in either order
    a, b = _state_in(0, range(100, 110)), _state_in(2, range(100, 110))
    assert supersedes(b, a) and not supersedes(a, b)
    # nothing held, a deletion, or a value that is not a format-2 station state: the log's order
    clock = b'{"v":1}'
    for incoming, held in [(old, None), (None, new), (clock, new), (new, clock)]:
        assert supersedes(incoming, held)
