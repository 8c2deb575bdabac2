from stream_processor.offsets import MAX_SEEKS, OffsetGuard, TailWatch, Verdict

P, D, S = Verdict.PROCESS, Verdict.DROP, Verdict.SEEK


def run(guard: OffsetGuard, offsets: list[int], partition: int = 0) -> list[Verdict]:
    return [guard.check(partition, o) for o in offsets]


def test_contiguous_offsets_are_processed():
    assert run(OffsetGuard(), [5, 6, 7, 8]) == [P] * 4


def test_a_hole_seeks_back_drops_what_was_in_flight_and_processes_the_reread():
    g = OffsetGuard()
    # 0-2 read, 3-5 lost by the consumer, 6-7 still arrive, then the re-read from 3
    assert run(g, [0, 1, 2, 6]) == [P, P, P, S]
    assert g.seek_target(0) == 3
    assert run(g, [7, 8]) == [D, D]
    assert run(g, [3, 4, 5, 6, 7, 8, 9]) == [P] * 7


def test_a_step_back_is_a_replay_and_is_processed():
    g = OffsetGuard()
    assert run(g, [10, 11, 12, 4, 5, 6]) == [P] * 6


def test_a_hole_in_the_log_is_accepted_after_repeated_seeks():
    g = OffsetGuard()
    assert run(g, [0, 1, 5]) == [P, P, S]
    verdicts = []
    for _ in range(MAX_SEEKS):  # every re-read starts at 5 again: 2-4 do not exist
        verdicts.append(g.check(0, 5))
    assert verdicts == [S] * (MAX_SEEKS - 1) + [P]
    assert g.holes_accepted == 1
    assert run(g, [6, 7]) == [P, P]


def test_partitions_are_independent_and_forgotten_on_revocation():
    g = OffsetGuard()
    assert g.check(0, 0) is P and g.check(1, 100) is P
    assert g.check(1, 103) is S
    assert g.check(0, 1) is P
    g.forget({1})
    assert g.check(1, 500) is P  # new owner: starts wherever the consumer's seek put it


def test_expected_is_the_next_offset_or_the_pending_seek_target():
    g = OffsetGuard()
    assert g.expected(0) is None  # nothing seen since the assignment
    run(g, [0, 1, 2])
    assert g.expected(0) == 3
    assert g.check(0, 7) is S
    assert g.expected(0) == 3  # the re-read must start there
    run(g, [3])
    assert g.expected(0) == 4


def watch_run(watch: TailWatch, steps: list[tuple[float, int, int | None, int, bool]]) -> list[bool]:
    """Each step: (now, expected, position, taken, idle) for partition 0."""
    return [watch.lost(0, e, pos, taken=t, idle=i, now=now) for now, e, pos, t, i in steps]


def test_a_partition_read_past_and_silent_while_the_stream_moves_is_lost():
    w = TailWatch(stall_s=3.0)
    # the consumer read up to 350, the guard expects 348; others keep being taken in
    steps = [(0.0, 348, 350, 1000, False), (1.0, 348, 350, 2000, False), (2.0, 348, 350, 3000, False)]
    assert watch_run(w, steps) == [False, False, False]
    assert w.lost(0, 348, 350, taken=4000, idle=False, now=3.0) is True
    # decided once: the next check starts a new suspicion
    assert w.lost(0, 348, 350, taken=5000, idle=False, now=4.0) is False


def test_an_idle_worker_also_counts_as_a_moving_stream():
    w = TailWatch(stall_s=3.0)
    assert watch_run(w, [(0.0, 10, 20, 500, True), (3.5, 10, 20, 500, True)]) == [False, True]


def test_a_stuck_stream_is_not_a_hole():
    # nothing taken in and messages still queued: they are on their way, not lost
    w = TailWatch(stall_s=3.0)
    assert watch_run(w, [(0.0, 10, 20, 500, False), (10.0, 10, 20, 500, False)]) == [False, False]


def test_a_partition_that_moves_or_catches_up_is_not_lost():
    w = TailWatch(stall_s=3.0)
    # its messages keep arriving: the expected offset moves, each time a new suspicion
    steps = [(0.0, 10, 20, 0, False), (2.0, 15, 25, 100, False), (4.0, 22, 30, 200, False), (6.0, 29, 30, 300, False)]
    assert watch_run(w, steps) == [False] * 4
    # caught up (or the consumer has no position yet): forgotten
    assert (
        watch_run(w, [(7.0, 30, 30, 400, False), (11.0, 30, 31, 500, False), (12.0, 30, None, 600, False)])
        == [False] * 3
    )
    assert w.lost(0, 30, 31, taken=700, idle=False, now=16.0) is False  # a new suspicion after None


def test_revoked_partitions_are_forgotten():
    w = TailWatch(stall_s=3.0)
    assert w.lost(1, 5, 9, taken=0, idle=True, now=0.0) is False
    w.forget({1})
    assert w.lost(1, 5, 9, taken=0, idle=True, now=5.0) is False  # starts over
    assert w.lost(1, 5, 9, taken=0, idle=True, now=8.0) is True


def test_a_hole_before_the_first_message_is_seen_against_the_start_offset():
    g = OffsetGuard()
    # sought to the committed offset 100 at assignment, but the first message is 130
    assert g.check(0, 130, start=100) is S
    assert g.seek_target(0) == 100 and g.expected(0) == 100
    assert run(g, [131, 132]) == [D, D]  # still the messages fetched before the seek landed
    assert run(g, [100, 101]) == [P, P]
    # at or before the start offset (a replay from further back) is processed as it comes
    h = OffsetGuard()
    assert h.check(0, 100, start=100) is P and h.check(1, 90, start=100) is P
    assert h.check(2, 500, start=None) is P  # start unknown: the consumer's seek decides


def test_readings_given_back_are_expected_again_and_a_later_offset_is_a_hole():
    g = OffsetGuard()
    run(g, [0, 1, 2, 3, 4, 5])
    g.rewind(0, 2)  # 2-5 were held back, then given back unprocessed
    assert g.expected(0) == 2
    assert run(g, [6]) == [S] and g.seek_target(0) == 2  # nothing reads 2-5 again by itself
    assert run(g, [7, 2, 3, 4, 5, 6, 7]) == [D, P, P, P, P, P, P]
    g.rewind(0, 9)  # never moves the guard forward
    assert g.expected(0) == 8
    assert g.check(0, 0) is P  # the rebalance's own seek back to the committed offset: a replay
    g.rewind(1, 40)  # a partition with nothing delivered yet starts from the first given back
    assert g.check(1, 41) is S and g.seek_target(1) == 40
    assert g.check(0, 1) is P
    assert run(g, [2, 9]) == [P, S]
    g.rewind(0, 1)  # during a pending seek back: it goes back further
    assert g.seek_target(0) == 1
