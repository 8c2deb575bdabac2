"""Input offset continuity: no reading is skipped silently, whatever the consumer library does.

Faust can hand a stream a partition's messages with a hole in them: when recovery completes it
resumes the input partitions before it seeks them to the committed offsets, and messages already
fetched when the seek lands are dropped (faust-streaming issues #216 and #596; seen here after a
kill -9 and restart: offsets 0-152 processed, then 196). The hole is never filled: Faust also stops
committing at it, so the worker would run on with stations missing hours and forecasts suspended.

:class:`OffsetGuard` watches the offsets of each input partition. When one jumps ahead it asks for a
seek back to the first missing offset and drops (without acknowledging) the messages that were
already on their way, until the re-read arrives. A hole that is really in the log (compaction,
transaction markers, retention) shows up again after every seek, and is accepted with a warning
after ``MAX_SEEKS`` of them.
A step backwards (a rebalance replays from the committed offset) is always processed: replays are
recognised per station by the offset their state has applied.

A hole before a partition's first message after an assignment is seen when the worker passes the
offset the partition was sought to (its committed offset): Faust's recovery can deliver records of a
fetch made before its seek to the committed offsets, and then drop the re-read.

A hole at the end of a partition (nothing after it arrives, so the guard never sees a jump) is found
by :class:`TailWatch`: the worker compares, every second, how far the consumer has read each
partition with the next offset the guard expects. Read past, with nothing of that partition taken in
for ``TAIL_STALL_S`` while the rest of the stream moves, means the messages in between were dropped
on their way: the partition is sought back. A false alarm only replays messages, which are
recognised per station like any replay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

__all__ = ["MAX_SEEKS", "TAIL_STALL_S", "OffsetGuard", "TailWatch", "Verdict"]

log = logging.getLogger(__name__)

#: Seeks back to the same offset before a hole is accepted as being in the log.
MAX_SEEKS = 4
#: Seconds a partition's messages may stay read but not taken in before they count as lost. Messages
#: on their way wait behind at most the stream's buffer (4096) and one micro-batch: under two seconds
#: at the worker's rate (a false alarm only replays messages).
TAIL_STALL_S = 3.0


class Verdict(Enum):
    PROCESS = "process"
    DROP = "drop"  # on its way before a seek back: it will be read again
    SEEK = "seek"  # a hole: drop this one and seek the partition back to ``OffsetGuard.seek_to``


@dataclass(slots=True)
class _Partition:
    expected: int  # the next offset to process
    seek_to: int | None = None  # a seek back is pending to this offset
    dropped_max: int = -1  # highest offset dropped since that seek
    attempts: int = 0  # seeks to seek_to so far


class OffsetGuard:
    def __init__(self) -> None:
        self._parts: dict[int, _Partition] = {}
        self.holes_accepted = 0

    def check(self, partition: int, offset: int, start: int | None = None) -> Verdict:
        """``start``: where the partition was sought to at its assignment (its committed offset),
        if known; checked against the partition's first message."""
        p = self._parts.get(partition)
        if p is None:  # first message since start or assignment
            if start is None or offset <= start:  # the consumer's seek decides
                self._parts[partition] = _Partition(expected=offset + 1)
                return Verdict.PROCESS
            # a hole before the first message: what came from the start offset was lost
            self._parts[partition] = _Partition(expected=start, seek_to=start, dropped_max=offset, attempts=1)
            return Verdict.SEEK
        if p.seek_to is None:
            if offset <= p.expected:  # in order, or a replay from an earlier committed offset
                p.expected = offset + 1
                return Verdict.PROCESS
            p.seek_to, p.dropped_max, p.attempts = p.expected, offset, 1
            return Verdict.SEEK
        if offset > p.dropped_max:  # still the messages fetched before the seek landed
            p.dropped_max = offset
            return Verdict.DROP
        if offset > p.seek_to and p.attempts < MAX_SEEKS:
            # The re-read starts past the hole. Faust may have dropped the re-read itself (messages
            # still being drained when the seek landed move its read position on): seek again.
            p.dropped_max = offset
            p.attempts += 1
            return Verdict.SEEK
        if offset > p.seek_to:  # still past the hole after MAX_SEEKS seeks: it is in the log itself
            log.warning(
                "partition %d: offsets %d-%d are not in the log; continuing at %d",
                partition,
                p.seek_to,
                offset - 1,
                offset,
            )
            self.holes_accepted += 1
        p.seek_to, p.dropped_max, p.attempts, p.expected = None, -1, 0, offset + 1
        return Verdict.PROCESS

    def expected(self, partition: int) -> int | None:
        """The next offset the partition must deliver: the one after the last processed, or the
        target of a pending seek back; None before the partition's first message."""
        p = self._parts.get(partition)
        if p is None:
            return None
        return p.expected if p.seek_to is None else p.seek_to

    def seek_target(self, partition: int) -> int:
        p = self._parts[partition]
        assert p.seek_to is not None
        return p.seek_to

    def rewind(self, partition: int, offset: int) -> None:
        """Messages from ``offset`` on were taken but given back unprocessed (readings held back
        when a rebalance began): the partition must deliver them again. Nothing else reads them
        again when the rebalance's seek to the committed offsets has already happened (Faust
        counts a rebalance on until its recovery ends, after that seek), so the guard expects
        ``offset`` next: the next message past it is a hole (seek back), and so is a partition
        read past it that delivers nothing more (TailWatch)."""
        p = self._parts.get(partition)
        if p is None:
            self._parts[partition] = _Partition(expected=offset)
        elif p.seek_to is None:
            p.expected = min(p.expected, offset)
        else:
            p.seek_to = min(p.seek_to, offset)

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: their next owner (maybe us again) starts from the committed offset."""
        for partition in partitions:
            self._parts.pop(partition, None)


@dataclass(slots=True)
class _Suspect:
    expected: int  # the guard's expected offset when the partition was first seen read past it
    since: float  # when
    taken: int  # messages taken in by then


class TailWatch:
    """Decides when a partition read past the guard's expected offset has lost those messages."""

    def __init__(self, stall_s: float = TAIL_STALL_S) -> None:
        self.stall_s = stall_s
        self._suspects: dict[int, _Suspect] = {}

    def lost(self, partition: int, expected: int, position: int | None, *, taken: int, idle: bool, now: float) -> bool:
        """Whether to seek ``partition`` back to ``expected``.

        ``position``: the next offset the consumer will fetch; ``taken``: messages the worker has
        taken in so far (all partitions); ``idle``: the worker is waiting for messages with none
        queued. Lost means: read past ``expected`` for ``stall_s`` with no message of the partition
        taken in meanwhile, while the stream moved (others were taken in, or nothing is left to
        take). A stream that does not move is stuck, not lossy: nothing is decided then.
        """
        if position is None or position <= expected:
            self._suspects.pop(partition, None)
            return False
        suspect = self._suspects.get(partition)
        if suspect is None or suspect.expected != expected:  # new, or the partition moved on since
            self._suspects[partition] = _Suspect(expected, now, taken)
            return False
        if now - suspect.since < self.stall_s or (taken == suspect.taken and not idle):
            return False
        del self._suspects[partition]
        return True

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._suspects.pop(partition, None)
