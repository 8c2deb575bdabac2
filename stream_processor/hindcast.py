"""Live hindcast skill: when the actual PM2.5 of an hour arrives, score the forecasts issued for it.

For each station and each scored horizon the scorer keeps exponentially weighted squared and
absolute errors of the model and of persistence (the last reading at issue time) on the same
pairs, so "is the model beating persistence lately?" has a live answer.

The memory is the worker's own (not a table): it holds only the last 48 issue hours per station
(about 3 KB), is rebuilt as forecasts flow, and after a restart the first day is partly unscored.
A pair is scored once, even if its reading or forecast is replayed.
"""

from __future__ import annotations

import functools
import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pm25.schema import KEY_HORIZONS, hour_to_iso, kept_json

__all__ = ["SCORED_HORIZONS", "HindcastScorer", "Skill"]

SCORED_HORIZONS = KEY_HORIZONS
#: Weight of the newest pair in the rolling means (about the last 100 pairs count).
ALPHA = 0.01
_PLAIN_MEAN_PAIRS = int(1 / ALPHA)
#: Every pair is scored; a station's skill message is published for every third hour only.
PUBLISH_EVERY_HOURS = 3


@dataclass(slots=True)
class Skill:
    n: int = 0
    mse: float = 0.0
    mae: float = 0.0
    p_mse: float = 0.0
    p_mae: float = 0.0

    def update(self, err: float, p_err: float) -> None:
        n = self.n = self.n + 1
        a = 1.0 / n if n < _PLAIN_MEAN_PAIRS else ALPHA  # plain mean first, then exponential
        self.mse += a * (err * err - self.mse)
        self.mae += a * ((err if err >= 0 else -err) - self.mae)
        self.p_mse += a * (p_err * p_err - self.p_mse)
        self.p_mae += a * ((p_err if p_err >= 0 else -p_err) - self.p_mae)

    def as_dict(self, h: int) -> dict[str, float | int]:
        """Rolling skill in µg/m³ (full precision: consumers round for display)."""
        return {
            "h": h,
            "n": self.n,
            "rmse": math.sqrt(self.mse),
            "mae": self.mae,
            "persistence_rmse": math.sqrt(self.p_mse),
            "persistence_mae": self.p_mae,
        }


#: Issue hours (and target hours) remembered per station: a late reading still finds its forecasts.
_RING = 2 * max(SCORED_HORIZONS)
_N = len(SCORED_HORIZONS)


class _Station:
    """One station's recent forecasts and scored pairs in flat arrays (about 3 KB; the dicts of
    floats used before were estimated at 50-80 KB per station): slot ``hour % _RING`` holds that
    issue hour's persistence and point forecasts, and, for target hour ``hour``, a bit per scored
    horizon already scored."""

    __slots__ = ("issued_hour", "present", "scored", "scored_hour", "skill", "values")

    def __init__(self) -> None:
        self.issued_hour = array("q", [-1]) * _RING
        self.values = array("d", [0.0]) * (_RING * (_N + 1))  # persistence, then one per scored horizon
        self.present = bytearray(_RING)  # bit j: the forecast has SCORED_HORIZONS[j]
        self.scored_hour = array("q", [-1]) * _RING
        self.scored = bytearray(_RING)  # bit j: the pair (target hour, SCORED_HORIZONS[j]) is scored
        self.skill = {h: Skill() for h in SCORED_HORIZONS}


@functools.lru_cache(maxsize=8)
def _scored_positions(horizons: tuple[int, ...]) -> list[tuple[int, int]]:
    """(j, i): SCORED_HORIZONS[j] is at position i of a model's ``horizons``."""
    return [(j, horizons.index(h)) for j, h in enumerate(SCORED_HORIZONS) if h in horizons]


class HindcastScorer:
    def __init__(self) -> None:
        self._stations: dict[str, _Station] = {}
        self.total: dict[int, Skill] = {h: Skill() for h in SCORED_HORIZONS}

    def record(
        self, station_id: str, issued: int, horizons: Sequence[int], point: Sequence[float], persistence: float
    ) -> None:
        """Keep a forecast's point values (issued at epoch hour ``issued``) until its targets arrive."""
        if len(point) != len(horizons):
            raise ValueError(f"{len(point)} point values for {len(horizons)} horizons")
        st = self._stations.get(station_id)
        if st is None:
            st = self._stations[station_id] = _Station()
        slot = issued % _RING
        if st.issued_hour[slot] > issued:  # a re-issue older than what the slot holds: too old to score
            return
        st.issued_hour[slot] = issued
        base = slot * (_N + 1)
        st.values[base] = persistence
        mask = 0
        for j, i in _scored_positions(tuple(horizons)):
            st.values[base + 1 + j] = point[i]
            mask |= 1 << j
        st.present[slot] = mask

    def observe(
        self, station_id: str, hour: int, pm25: float | None, extra: Callable[[], dict[str, Any]] | None = None
    ) -> bytes | None:
        """Score the forecasts for ``hour``; returns a score message (JSON) or None. ``extra``: more
        fields for the message (called only when one is published)."""
        st = self._stations.get(station_id)
        if st is None or pm25 is None:
            return None
        target = hour % _RING
        if st.scored_hour[target] != hour:
            if st.scored_hour[target] > hour:  # older than every target remembered: not scored
                return None
            st.scored_hour[target] = hour
            st.scored[target] = 0
        done = st.scored[target]
        scored = []
        for j, h in enumerate(SCORED_HORIZONS):
            bit = 1 << j
            slot = (hour - h) % _RING
            if done & bit or st.issued_hour[slot] != hour - h or not st.present[slot] & bit:
                continue
            done |= bit
            base = slot * (_N + 1)
            err, p_err = st.values[base + 1 + j] - pm25, st.values[base] - pm25
            st.skill[h].update(err, p_err)
            self.total[h].update(err, p_err)
            scored.append(h)
        st.scored[target] = done
        if not scored or hour % PUBLISH_EVERY_HOURS:
            return None
        body: dict[str, Any] = {
            "station_id": station_id,
            "target_time": hour_to_iso(hour),
            "actual": pm25,
            "scored_horizons": scored,
            "skill": [st.skill[h].as_dict(h) for h in SCORED_HORIZONS],
        }
        if extra is not None:
            body.update(extra())
        return kept_json(body)  # queued with the batch's outputs
