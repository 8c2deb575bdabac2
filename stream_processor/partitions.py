"""Which input partitions a merge across partitions waits for: those still delivering
(:class:`PartitionActivity`, an idle timeout) and those behind that still move
(:class:`StuckPartitions`). The worker's networks' watermark (stream_processor.processor) and the
router's merge (stream_processor.router) use both."""

from __future__ import annotations

__all__ = ["ACTIVE_S", "BEHIND_MAX_S", "PartitionActivity", "StuckPartitions"]

#: A partition that delivered a message within this many seconds is waited for even when it looks
#: caught up (a producer's writes to the partitions do not land at once), and so is every partition
#: for this long after the stream starts moving after a pause (PartitionActivity): the worker's
#: networks' watermark (Processor.watermark) and the router's merge.
ACTIVE_S = 2.0
#: When a partition has counted as behind for this long without moving, it is no longer waited for
#: (a partition that never catches up must not stop the others; StuckPartitions).
BEHIND_MAX_S = 60.0


class PartitionActivity:
    """Which input partitions count as active for the networks' watermark (Processor.watermark):
    those that delivered within ``active_s`` seconds, and every assigned partition for
    ``active_s`` seconds after the stream starts moving again after a pause of ``active_s`` (an
    idle timeout, as event-time watermarks across partitions need: the producers' writes to the
    partitions do not land at once, so a partition that has delivered nothing yet this time, or
    nothing ever, is waited for that long before the others' hours close without it)."""

    def __init__(self, active_s: float) -> None:
        self.active_s = active_s
        self._at: dict[int, float] = {}  # partition -> when it last delivered
        self._last = float("-inf")  # when any partition last delivered
        self._resumed = float("-inf")  # when the stream last started moving after a pause

    def delivered(self, partitions: set[int], now: float) -> None:
        if not partitions:
            return
        if now - self._last >= self.active_s:
            self._resumed = now
        self._last = now
        for p in partitions:
            self._at[p] = now

    def active(self, assigned: set[int], now: float) -> set[int]:
        since_resumed = now - self._resumed < self.active_s
        return {p for p in assigned if since_resumed or now - self._at.get(p, float("-inf")) < self.active_s}

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self._at.pop(p, None)


class StuckPartitions:
    """Which partitions the networks' watermark waits for have made no progress for ``max_s``
    seconds: counted as behind (messages not taken in yet) at every batch while the offset the
    worker expects next from them stayed the same. The worker stops waiting
    for those (a partition that never catches up must not stop the others' forecasts) until they
    move again. A partition that is behind but moving is not stuck: under a steady stream some
    partition nearly always has messages on their way."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self._since: dict[int, tuple[int | None, float]] = {}  # partition -> (position, since when)
        self.reported: set[int] = set()  # stuck partitions already reported

    def stuck(self, behind: dict[int, int | None], now: float) -> set[int]:
        """``behind``: each partition counted as behind, with the next offset expected from it
        (None: nothing delivered yet). Returns the stuck ones."""
        for p in [p for p in self._since if p not in behind]:
            del self._since[p]
        out = set()
        for p, position in behind.items():
            seen = self._since.get(p)
            if seen is None or seen[0] != position:
                self._since[p] = (position, now)
            elif now - seen[1] > self.max_s:
                out.add(p)
        self.reported &= out
        return out
