"""Per-station state: a bounded event-time buffer of raw hourly rows, as one compact value.

The state is keyed by station in a table. Its bytes are a format version (uint8, ``FORMAT``),
``newest_hour`` (int64), ``capacity`` (uint16), ``last_offset`` (int64: the input offset of the
newest message applied, -1 if unknown), ``partition`` (int32: the input partition of the
station's readings, -1 if unknown), a presence byte per hour, then the float32 rows. A state
in a format this code does not know raises :class:`StateFormatError`; a format-1 state (rows of
the station's own columns only, before the network's columns existed) is read with the network's
columns missing.
Row ``capacity - 1`` is ``newest_hour``; row ``i`` is ``newest_hour - (capacity - 1 - i)``.

:func:`apply_reading` is pure: state and reading in, new state and the epoch hours whose
forecasts must be (re)issued out. Event time orders everything, never arrival:

* a newer reading shifts the buffer; missing hours stay NaN (the feature code imputes them);
* an out-of-order reading inside the allowed lateness is inserted in place, and the forecasts
  whose windows contain it are re-issued, so the final forecast for every hour is the one the
  clean, ordered sequence gives;
* an identical duplicate changes nothing and re-issues only its own hour (idempotent output,
  needed for at-least-once delivery); a different value for the same hour replaces the old one;
* a reading older than the allowed lateness raises :class:`TooLate`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pm25.features import OWN_FIELDS, RAW_FIELDS, encode_reading
from pm25.schema import Reading

__all__ = ["FORMAT", "StateFormatError", "StationWindow", "TooLate", "apply_reading", "supersedes"]

FORMAT = 2
_HEADERS = {1: struct.Struct("<BqHq"), 2: struct.Struct("<BqHqi")}
_HEADER = _HEADERS[FORMAT]
_N = len(RAW_FIELDS)
_OWN = len(OWN_FIELDS)
#: columns per row of each format this code reads
_COLUMNS = {1: _OWN, 2: _N}


def supersedes(incoming: bytes | None, held: bytes | None) -> bool:
    """Whether a stored value read back at recovery replaces the value held under its key.

    A station's state is written to the changelog partition of its readings' input partition. When
    that partition changes (its readings' key changed, from station to network, or its network
    did), its newer states go to another partition while the older ones stay in the first, and a
    recovery reads the partitions in no fixed order. Of two states of a station from different
    partitions the one with the newer hour wins (then the higher partition, so that the choice
    never depends on the order); within one partition the log's order holds, as for anything that
    is not a station state of format 2 (a network's clock, a deletion, a format-1 state)."""
    if incoming is None or held is None:
        return True
    new, old = _rank(incoming), _rank(held)
    if new is None or old is None or new[1] == old[1]:
        return True
    return new > old


def _rank(data: bytes) -> tuple[int, int] | None:
    """(newest hour, changelog partition) of a format-2 station state; None for anything else."""
    if len(data) < _HEADER.size or data[0] != FORMAT:
        return None
    _, newest, _, _, partition = _HEADER.unpack_from(data)
    return newest, max(partition, 0)


class StateFormatError(ValueError):
    """Stored state bytes this code cannot decode."""


class TooLate(ValueError):
    """The reading is older than the allowed lateness."""


@dataclass(slots=True)
class StationWindow:
    newest_hour: int
    present: npt.NDArray[np.uint8]  # [capacity]
    rows: npt.NDArray[np.float32]  # [capacity, len(RAW_FIELDS)]
    last_offset: int = -1
    partition: int = -1

    @property
    def capacity(self) -> int:
        return int(self.present.shape[0])

    @classmethod
    def empty(cls, capacity: int, newest_hour: int) -> StationWindow:
        return cls(
            newest_hour=newest_hour,
            present=np.zeros(capacity, dtype=np.uint8),
            rows=np.full((capacity, _N), np.nan, dtype=np.float32),
        )

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(FORMAT, self.newest_hour, self.capacity, self.last_offset, self.partition)
        return header + self.present.tobytes() + self.rows.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> StationWindow:
        window, rest = cls.split(data)
        if rest:
            raise StateFormatError(f"state of {len(data)} bytes does not match its capacity {window.capacity}")
        return window

    @classmethod
    def split(cls, data: bytes) -> tuple[StationWindow, bytes]:
        """A stored station state: the window, and the bytes after it (the station's adaptation,
        pm25.adapt, which the worker appends; empty when there is none)."""
        if len(data) < 1 or data[0] not in _COLUMNS or len(data) < _HEADERS[data[0]].size:
            raise StateFormatError(f"state format {data[:1]!r} of {len(data)} bytes; this code reads format {FORMAT}")
        header = _HEADERS[data[0]]
        fmt, newest, cap, last_offset, *rest = header.unpack_from(data)
        partition = rest[0] if rest else -1
        n = _COLUMNS[fmt]
        off = header.size
        end = off + cap + cap * n * 4
        if len(data) < end:
            raise StateFormatError(f"state of {len(data)} bytes does not match its capacity {cap}")
        present = np.frombuffer(data, dtype=np.uint8, count=cap, offset=off).copy()
        stored = np.frombuffer(data, dtype=np.float32, count=cap * n, offset=off + cap).reshape(cap, n)
        rows = np.full((cap, _N), np.nan, dtype=np.float32)
        rows[:, :n] = stored
        window = cls(newest_hour=newest, present=present, rows=rows, last_offset=last_offset, partition=partition)
        return window, data[end:]

    def index_of(self, hour: int) -> int:
        return self.capacity - 1 - (self.newest_hour - hour)

    def window(self, end_hour: int, length: int) -> npt.NDArray[np.float32]:
        """The ``length`` raw rows ending at ``end_hour`` (NaN rows for hours never seen)."""
        end = self.index_of(end_hour)
        start = end - length + 1
        if start < 0 or end >= self.capacity:
            raise ValueError(f"window of {length} h ending at {end_hour} is outside the buffer")
        return self.rows[start : end + 1]

    def shift_to(self, hour: int) -> None:
        d = hour - self.newest_hour
        if d >= self.capacity:
            self.present[:] = 0
            self.rows[:] = np.nan
        else:
            self.present[:-d] = self.present[d:]
            self.present[-d:] = 0
            self.rows[:-d] = self.rows[d:]
            self.rows[-d:] = np.nan
        self.newest_hour = hour


def apply_reading(
    state: StationWindow | None,
    reading: Reading,
    *,
    capacity: int,
    lateness_hours: int,
    window_hours: int,
) -> tuple[StationWindow, bool, list[int]]:
    """Insert a reading; return (state, changed, hours to issue forecasts for, ascending).

    ``capacity`` must be at least ``window_hours + lateness_hours`` so that every hour that may
    be re-issued still has its full window in the buffer.
    """
    if capacity < window_hours + lateness_hours:
        raise ValueError("capacity must be >= window_hours + lateness_hours")
    hour = reading.hour
    if state is None or state.capacity != capacity:
        fresh = StationWindow.empty(capacity, hour)
        if state is not None:  # capacity changed by configuration: keep what fits
            keep = min(capacity, state.capacity)
            fresh.newest_hour = state.newest_hour
            fresh.last_offset = state.last_offset
            fresh.partition = state.partition
            fresh.present[-keep:] = state.present[-keep:]
            fresh.rows[-keep:] = state.rows[-keep:]
        state = fresh
    if hour > state.newest_hour:
        state.shift_to(hour)
    elif hour < state.newest_hour - lateness_hours:
        raise TooLate(
            f"reading for hour {reading.timestamp} is more than {lateness_hours} h older "
            f"than the newest one ({state.newest_hour - hour} h)"
        )
    i = state.index_of(hour)
    row = encode_reading(reading)
    if state.present[i] and np.array_equal(state.rows[i, :_OWN], row[:_OWN], equal_nan=True):
        return state, False, [hour]  # the network's columns stay as they are
    state.present[i] = 1
    state.rows[i] = row
    last = min(state.newest_hour, hour + window_hours - 1)
    later = [h for h in range(hour + 1, last + 1) if state.present[state.index_of(h)]]
    return state, True, [hour, *later]
