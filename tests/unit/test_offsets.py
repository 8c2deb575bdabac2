from stream_processor.offsets import MAX_SEEKS, OffsetGuard, Verdict

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
