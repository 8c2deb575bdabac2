"""Live hindcast skill: when the actual PM2.5 of an hour arrives, score the forecasts issued for it.

For each station and each scored horizon the scorer keeps exponentially weighted squared and
absolute errors of the model and of persistence (the last reading at issue time) on the same
pairs, so "is the model beating persistence lately?" has a live answer.

The memory is the worker's own (not a table): it holds only the last 24 issue hours per station,
is rebuilt as forecasts flow, and after a restart the first day is partly unscored. A pair is
scored once, even if its reading or forecast is replayed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from pm25.schema import hour_to_iso

__all__ = ["SCORED_HORIZONS", "HindcastScorer", "Skill"]

SCORED_HORIZONS = (1, 3, 6, 12, 24)
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


@dataclass(slots=True)
class _Station:
    # issue hour -> (persistence value, {h: point forecast})
    issued: OrderedDict[int, tuple[float, dict[int, float]]] = field(default_factory=OrderedDict)
    scored: set[tuple[int, int]] = field(default_factory=set)  # (target hour, h)
    skill: dict[int, Skill] = field(default_factory=lambda: {h: Skill() for h in SCORED_HORIZONS})


class HindcastScorer:
    def __init__(self) -> None:
        self._stations: dict[str, _Station] = {}
        self.total: dict[int, Skill] = {h: Skill() for h in SCORED_HORIZONS}

    def record(
        self, station_id: str, issued: int, horizons: Sequence[int], point: Sequence[float], persistence: float
    ) -> None:
        """Keep a forecast's point values (issued at epoch hour ``issued``) until its targets arrive."""
        st = self._stations.setdefault(station_id, _Station())
        st.issued[issued] = (persistence, {h: p for h, p in zip(horizons, point, strict=True) if h in SCORED_HORIZONS})
        st.issued.move_to_end(issued)
        while len(st.issued) > 2 * max(SCORED_HORIZONS):
            st.issued.popitem(last=False)

    def observe(self, station_id: str, hour: int, pm25: float | None) -> bytes | None:
        """Score the forecasts for ``hour``; returns a score message (JSON) or None."""
        st = self._stations.get(station_id)
        if st is None or pm25 is None:
            return None
        scored = []
        for h in SCORED_HORIZONS:
            rec = st.issued.get(hour - h)
            if rec is None or (hour, h) in st.scored or h not in rec[1]:
                continue
            st.scored.add((hour, h))
            err, p_err = rec[1][h] - pm25, rec[0] - pm25
            st.skill[h].update(err, p_err)
            self.total[h].update(err, p_err)
            scored.append(h)
        if len(st.scored) > 4 * len(SCORED_HORIZONS) * max(SCORED_HORIZONS):
            oldest = hour - 2 * max(SCORED_HORIZONS)
            st.scored = {k for k in st.scored if k[0] >= oldest}
        if not scored or hour % PUBLISH_EVERY_HOURS:
            return None
        return orjson.dumps(
            {
                "station_id": station_id,
                "target_time": hour_to_iso(hour),
                "actual": pm25,
                "scored_horizons": scored,
                "skill": [st.skill[h].as_dict(h) for h in SCORED_HORIZONS],
            }
        )

    def station_skill(self, station_id: str) -> list[dict[str, float | int]]:
        st = self._stations.get(station_id)
        return [] if st is None else [st.skill[h].as_dict(h) for h in SCORED_HORIZONS]
