"""Online adaptation per station: forecasts that learn from each station's own realised errors.

The model is trained on Beijing. A station elsewhere (other levels, other climate, other sensors)
corrects it from its own data as readings arrive. For each station and horizon the published
forecast combines five *experts*:

* ``model``: the ONNX model's forecast;
* ``persistence``: the last observed PM2.5;
* ``seasonal_24h``: the PM2.5 observed 24 hours before the target hour (the station's own daily
  cycle; persistence where that hour is missing);
* ``level_30d``: the station's own long-run level, an exponentially weighted mean of its sealed
  observations over about the last 30 days (where long horizons revert to; the mean of the last
  48 hours until the station's first learned block). It replaced the 48-hour mean (format 3):
  weights summing to one over a 48-hour mean and persistence cannot revert to the level a station
  keeps over weeks, which a station without weather sensors needs most (docs/skill.md).
* ``model_alone``: for a station in a network, the forecast of the bundle's model_alone graph (an
  ensemble's smallest member, training.export.alone_graph) from the same window with the network's
  columns missing (the station as if alone; format 5). The model trained with the network leans on
  the neighbours, which at long horizons, or in a network of sensors that do not share the air,
  can do worse than the station's own history; the combination weighs the two from the station's
  own errors (docs/regional.md). For a lone station it is the model's forecast, and it is left out
  (its statistics equal the model's).

Their weights are the minimum-mean-squared-error combination (Bates and Granger) from the
exponentially weighted covariance of the experts' errors (about the last 90 days of pairs, shrunk
towards the diagonal, weights clipped at zero and summing to one), blended in from "the model
alone" over a new station's first 30 days of pairs (at once where the model proves grossly wrong
for it); each expert is first corrected by its own
exponentially weighted bias (so a model that is right in shape but wrong in level is kept, and a
change of weights never meets a stale bias). Correlated experts (the model and persistence at one
hour) are weighed as such, which inverse-MSE weights cannot do. The 80 % interval is the combination moved by two
quantile trackers in log1p space (online quantile tracking, the step rule of adaptive conformal
inference, Gibbs and Candes 2021; Angelopoulos et al. 2023): each miss of a published 90 % bound
raises it, each hit lowers it by a ninth as much, so each station's long-run coverage of what it
published converges to 80 % whatever its level. Bounds widen with the hours since the last PM2.5
observation.

Order independence. Readings may arrive out of order within the lateness bound ``L``, and the final
forecast for every hour must equal the one the clean sequence gives. So the statistics learn only
from *sealed* hours (older than ``newest - L``, which no reading can change any more) and a forecast
issued at hour ``t`` uses the statistics as they were sealed through the last 24-hour boundary at or
before ``t - L - 1``: a pure function of the data up to ``t``. The station keeps those snapshots and a
ring of what it needs to score sealed targets (the observation, persistence and the model's forecast
at the learned horizons, per hour). The cost is a learning delay of ``L + 1`` to ``L + 24`` hours;
the statistics are learned in vectorised blocks of 24 sealed hours. Each station's blocks end at its
own hour of the day (its *phase*, from a checksum of its id): the stations of a network, which
report the same hours, do not all learn in the same hour (1000 stations learning at once held a
worker up for about half a second).

Statistics are learned at the horizons :data:`ANCHORS` and interpolated in between. Every number is
float32 after each step, so the serialised state equals the state in memory: a worker restarted from
its saved state continues exactly as if it had never stopped, and the backtest runs this same code.

>>> a = Adapter(lateness_hours=2, horizons=tuple(range(1, 25)), q_lo=[-0.3] * 5, q_hi=[0.3] * 5)
>>> st = a.new_state()
>>> row = a.record(st, 100, observed=50.0, persistence=50.0, model=np.full(24, 60.0, np.float32))
>>> p = a.combine([row], np.full((1, 24), 60.0, np.float32))
>>> round(float(p.point[0, 0]), 3)  # a new station: the model alone
60.0
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pm25.schema import KEY_HORIZONS

__all__ = ["ANCHORS", "EXPERTS", "AdaptFormatError", "Adapter", "Combined", "Row", "StationAdaptation", "station_phase"]

F32 = npt.NDArray[np.float32]

#: Horizons (hours) at which each station's statistics are learned; the others are interpolated.
ANCHORS: tuple[int, ...] = KEY_HORIZONS
EXPERTS: tuple[str, ...] = ("model", "persistence", "seasonal_24h", "level_30d", "model_alone")
#: The statistics are learned in blocks of this many sealed hours, each ending with a snapshot.
SNAPSHOT_EVERY = 24
_K = len(EXPERTS)
_A = len(ANCHORS)
# statistics columns: the upper triangle of the experts' error second-moment matrix, each expert's
# mean error (its bias), then pairs, lower and upper offset
_TRI = [(j, k) for j in range(_K) for k in range(j, _K)]
_N_TRI = len(_TRI)
_B0 = _N_TRI
_N, _QLO, _QHI = _B0 + _K, _B0 + _K + 1, _B0 + _K + 2
# the mean squared error of the combination as the snapshots proposed it (at its issue hours)
_MC = _B0 + _K + 3
# the same for the model alone corrected by the bias the snapshots held (a like-for-like rival)
_MM = _B0 + _K + 4
# the station's level (the level_30d expert) and the observations it has seen; the same in every row
_LVL, _LVN = _B0 + _K + 5, _B0 + _K + 6
_STAT_COLS = _B0 + _K + 7
#: the level's exponential weights: about the last 30 days of observations (a plain mean before
#: that); a month, not tuned
_LEVEL_ALPHA_MIN = 1.0 / 720
#: shrinkage of the error covariance towards its diagonal (stabilises the combination weights)
_SHRINK = 0.15
# ring columns: observation, persistence and 48-hour mean at issue, the interval widening of the
# forecast issued then, the model's forecast per anchor, then the model's without the network (µg/m³)
_Y, _PERS, _MEAN, _WIDEN, _MODEL = 0, 1, 2, 3, 4
_ALONE = _MODEL + _A
_RING_COLS = 4 + 2 * _A
# where the model_alone expert's statistics sit beside the model's (to tell when they are one)
_ALONE_K = EXPERTS.index("model_alone")
#: exponential weights: about the last 90 days of pairs (a plain mean before that); chosen on the
#: validation year among 7, 30 and 90 days (`pm25 evaluate --split val`, docs/skill.md)
_MSE_ALPHA_MIN = 1.0 / 2160
#: the bias is shrunk towards 0 over the first pairs (a noisy early mean would hurt): about 14 days
_BIAS_PRIOR_PAIRS = 336.0
#: pairs over which the weights move linearly from "model alone" to the estimated weights: about 30
#: days. Hourly errors come in episodes of days, so a few days of pairs hold few independent ones;
#: with 2 days (and a bias prior of 24 pairs) a new station forecast worse than the model alone for
#: its first weeks (`pm25 coldstart`, docs/skill.md item 7)
_WARMUP_PAIRS = 720.0
#: ... unless the model is grossly wrong for the station: from this many pairs on, where the model's
#: own error (bias-corrected) is more than _PROVEN_RATIO times the combination's, the estimated
#: weights apply at once (a model four times the truth is weighed out within days, not a month)
_PROVEN_PAIRS = 48.0
_PROVEN_RATIO = 2.0
#: pairs before the model alone may replace a combination that has done worse than it
_FALLBACK_PAIRS = 48.0
#: a window with fewer PM2.5 observations than this (a new station's first hours, or a station back
#: from a long gap) is mostly imputed, and the model is far from what it was trained on: its
#: forecast moves towards persistence in proportion (observations / _YOUNG_OBSERVATIONS). Chosen
#: on the validation year among 12, 24 and 48 (docs/skill.md item 8)
_YOUNG_OBSERVATIONS = 12.0
#: quantile tracker step, as a share of the bundle's calibrated interval width at that horizon.
#: Chosen on the validation year (docs/skill.md): 0.04, 0.015 and 0.007 all kept coverage at 80 %,
#: but a run of correlated misses (a pollution episode) widened the 24-hour interval up to tenfold
#: for days with 0.04; 0.015 halves the median 24-hour width (as a ratio) and still moves a bound by
#: a whole calibrated width within about three days of misses (two-thirds of a day with 0.04).
_Q_STEP = 0.015
_Q_MISS = 0.1  # each bound is a 10 % / 90 % quantile
#: interval widening per hour since the last PM2.5 observation: sqrt(1 + gap / _GAP_WIDEN_HOURS)
_GAP_WIDEN_HOURS = 6.0
_FORMAT = 5
_HEADER = struct.Struct("<BqqHBBB")  # format, newest, sealed, ring rows, anchors, experts, snapshots
_PHASE = struct.Struct("<B")  # the station's phase, after the header
#: format 5 added the model_alone expert, format 4 the level_30d expert (where formats 2 and 3 had
#: the 48-hour mean): older formats are refused, and the worker starts such a station's adaptation
#: afresh (its window is kept)
_READS = (5,)
_SNAP_HEADER = struct.Struct("<q")


#: a snapshot's parameters: published [H, K + 3]; published [A, K + 3] and proposed [A, K + 4]
#: rows at the anchors (float32 arrays: a thousand stations keep several snapshots' each, and
#: Python floats took five times the memory); the station's level then (NaN: none yet)
_Params = tuple[F32, F32, F32, float]


class AdaptFormatError(ValueError):
    """Stored adaptation bytes this code cannot decode."""


@dataclass(slots=True)
class StationAdaptation:
    """One station's adaptation state (see the module docstring)."""

    newest: int  # newest issue hour recorded (-1: none yet)
    sealed: int  # targets up to this hour have been learned from
    ring: F32  # [rows, _RING_COLS]; row rows-1 is ``newest``
    stats: F32  # [_A, _STAT_COLS] working statistics, sealed through ``sealed``
    snapshots: list[tuple[int, F32]] = field(default_factory=list)  # (boundary hour, stats), ascending
    phase: int = 0  # blocks end at the hours h with (h + 1 - phase) % SNAPSHOT_EVERY == 0
    #: the interpolated parameters of each snapshot (and their anchor rows), by boundary hour:
    #: derived, never serialised
    params: dict[int, _Params] = field(default_factory=dict, repr=False, compare=False)
    #: the last current_weights() answer and the parameters it describes (derived, never serialised)
    view: tuple[F32, dict[str, list[float]]] | None = field(default=None, repr=False, compare=False)

    def to_bytes(self) -> bytes:
        parts = [
            _HEADER.pack(_FORMAT, self.newest, self.sealed, self.ring.shape[0], _A, _K, len(self.snapshots)),
            _PHASE.pack(self.phase),
            self.ring.tobytes(),
            self.stats.tobytes(),
        ]
        for hour, stats in self.snapshots:
            parts += [_SNAP_HEADER.pack(hour), stats.tobytes()]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> StationAdaptation:
        data = memoryview(data)
        if len(data) < _HEADER.size or data[0] not in _READS:
            raise AdaptFormatError(f"adaptation format {bytes(data[:1])!r}; this code reads formats {_READS}")
        _, newest, sealed, rows, anchors, experts, n_snap = _HEADER.unpack_from(data)
        if (anchors, experts) != (_A, _K):
            raise AdaptFormatError(f"adaptation for {anchors} anchors x {experts} experts; this code has {_A} x {_K}")
        off = _HEADER.size
        if len(data) < off + _PHASE.size:
            raise AdaptFormatError(f"adaptation of {len(data)} bytes has no phase")
        (phase,) = _PHASE.unpack_from(data, off)
        off += _PHASE.size
        stat_bytes = _A * _STAT_COLS * 4
        expected = off + rows * _RING_COLS * 4 + stat_bytes + n_snap * (_SNAP_HEADER.size + stat_bytes)
        if len(data) != expected or phase >= SNAPSHOT_EVERY:
            raise AdaptFormatError(f"adaptation of {len(data)} bytes (phase {phase}), expected {expected}")
        ring = np.frombuffer(data, np.float32, rows * _RING_COLS, off).reshape(rows, _RING_COLS).copy()
        off += ring.nbytes
        stats = np.frombuffer(data, np.float32, _A * _STAT_COLS, off).reshape(_A, _STAT_COLS).copy()
        off += stat_bytes
        snaps = []
        for _ in range(n_snap):
            (hour,) = _SNAP_HEADER.unpack_from(data, off)
            off += _SNAP_HEADER.size
            snaps.append((hour, np.frombuffer(data, np.float32, _A * _STAT_COLS, off).reshape(_A, _STAT_COLS).copy()))
            off += stat_bytes
        return cls(newest, sealed, ring, stats, snaps, phase)

    def row(self, hour: int) -> int:
        return self.ring.shape[0] - 1 - (self.newest - hour)


@dataclass(frozen=True, slots=True)
class Row:
    """What :meth:`Adapter.record` hands to :meth:`Adapter.combine` for one forecast."""

    params: F32  # [H, _K + 3]: weights per expert, bias, lower and upper offset (log1p)
    seasonal: F32  # [H] the seasonal expert (µg/m³; NaN where missing: persistence is used)
    persistence: float
    mean: float  # the 48-hour mean (µg/m³; stands in for the level before its first learned block)
    widen: float  # interval widening for the hours since the last observation
    level: float  # the station's level (µg/m³; NaN before its first learned block: the mean is used)
    trust: float = 1.0  # the combination's share against persistence (below 1 for a young window)


@dataclass(frozen=True, slots=True)
class Combined:
    point: F32  # [B, H] µg/m³
    lo: F32
    hi: F32


class Adapter:
    """The adaptation rules for one model (horizons, calibrated starting intervals) and lateness."""

    def __init__(
        self, *, lateness_hours: int, horizons: tuple[int, ...], q_lo: Sequence[float], q_hi: Sequence[float]
    ) -> None:
        missing = [h for h in ANCHORS if h not in horizons]
        if missing or list(horizons) != list(range(1, len(horizons) + 1)):
            raise ValueError(f"adaptation needs horizons 1..n including {ANCHORS}, got {horizons}")
        self.lateness = lateness_hours
        self.horizons = horizons
        self._anchor_pos = np.array([h - 1 for h in ANCHORS])
        # ring: from the oldest sealed target's 24-hour-earlier issue hour to the newest hour
        # the ring reaches back to the first target of the block still to learn (up to
        # SNAPSHOT_EVERY hours before the sealing limit) minus the longest horizon
        self.ring_rows = lateness_hours + max(ANCHORS) + SNAPSHOT_EVERY + 2
        self.prior = np.zeros((_A, _STAT_COLS), dtype=np.float32)
        self.prior[:, _QLO] = np.asarray(q_lo, dtype=np.float32)
        self.prior[:, _QHI] = np.asarray(q_hi, dtype=np.float32)
        self._widen: dict[int, float] = {}
        self._no_history = np.full(len(horizons), np.nan, dtype=np.float32)
        self._step = (_Q_STEP * np.maximum(self.prior[:, _QHI] - self.prior[:, _QLO], 0.1)).astype(np.float64)
        # linear interpolation between the anchors as one matrix: [H, A]
        hs = np.asarray(self.horizons, dtype=np.float64)
        eye = np.eye(_A)
        self._interp = np.stack(
            [np.interp(hs, np.asarray(ANCHORS, dtype=np.float64), eye[a]) for a in range(_A)], axis=1
        )
        self._prior_cached = self._params(self.prior)

    @classmethod
    def for_spec(
        cls, spec_intervals: Mapping[str, Sequence[float]], horizons: tuple[int, ...], lateness_hours: int
    ) -> Adapter:
        lo = [float(spec_intervals["log_residual_lo"][h - 1]) for h in ANCHORS]
        hi = [float(spec_intervals["log_residual_hi"][h - 1]) for h in ANCHORS]
        return cls(lateness_hours=lateness_hours, horizons=horizons, q_lo=lo, q_hi=hi)

    def new_state(self, station_id: str = "") -> StationAdaptation:
        """A new station's state; its learning phase comes from its id (see the module docstring)."""
        return StationAdaptation(
            newest=-1,
            sealed=-1,
            ring=np.full((self.ring_rows, _RING_COLS), np.nan, dtype=np.float32),
            stats=self.prior.copy(),
            phase=station_phase(station_id),
        )

    # -- per forecast, in arrival order --------------------------------------------------------
    def record(
        self,
        st: StationAdaptation,
        hour: int,
        *,
        observed: float,
        persistence: float,
        model: F32 | None,
        mean: float = math.nan,
        gap_hours: int = 0,
        observations: int | None = None,
        model_alone: F32 | None = None,
    ) -> Row:
        """Record what is known at issue hour ``hour`` (its observation, or NaN; persistence, the
        window's mean and the model's forecast, or NaN/None when no forecast is issued; the hours
        since the last observation; the PM2.5 observations in the model's window, None: a full
        window), learn from every target newly sealed, and return what the forecast at ``hour``
        combines with."""
        if st.ring.shape[0] != self.ring_rows:  # lateness changed by configuration: start afresh
            st.ring = np.full((self.ring_rows, _RING_COLS), np.nan, dtype=np.float32)
            st.newest = -1
        if st.newest < 0:
            st.newest = hour
            st.sealed = max(st.sealed, hour - self.lateness - 1)
        elif hour > st.newest:
            self._advance(st, hour)
        i = st.row(hour)
        widen = self._widen.get(gap_hours)
        if widen is None:
            widen = self._widen[gap_hours] = float(np.float32(math.sqrt(1.0 + gap_hours / _GAP_WIDEN_HOURS)))
        mean = persistence if mean != mean else mean
        row = st.ring[i]
        row[:_MODEL] = (observed, persistence, mean, widen)
        row[_MODEL:_ALONE] = np.nan if model is None else model[self._anchor_pos]
        alone = model if model_alone is None else model_alone
        row[_ALONE:] = np.nan if alone is None else alone[self._anchor_pos]
        snap = self._snapshot(st, hour)
        # the same hour yesterday for each target (NaN: persistence, filled in combine)
        ys = st.ring[i - 23 : i + 1, _Y].copy() if i >= 23 else self._no_history
        trust = 1.0 if observations is None else min(1.0, observations / _YOUNG_OBSERVATIONS)
        return Row(snap[0], ys, persistence, float(row[_MEAN]), widen, snap[3], trust)

    def _advance(self, st: StationAdaptation, hour: int) -> None:
        """Seal the targets up to ``hour - L - 1``; learn from them a block of SNAPSHOT_EVERY hours
        at a time, each block ending at a snapshot boundary, then shift the ring to ``hour``."""
        new_sealed = hour - self.lateness - 1
        learned, target_learned = _boundary(st.sealed, st.phase), _boundary(new_sealed, st.phase)
        if learned == target_learned and hour == st.newest + 1:  # the common case: one more hour
            st.sealed = max(st.sealed, new_sealed)
            st.ring[:-1] = st.ring[1:]
            st.ring[-1] = np.nan
            st.newest = hour
            return
        boundary = learned + SNAPSHOT_EVERY
        while boundary <= target_learned:
            first = boundary - SNAPSHOT_EVERY + 1
            if first > st.newest:  # no data from here on: the statistics stay as they are
                self._snap(st, boundary)
                self._snap(st, target_learned)
                break
            self._learn_block(st, first, min(boundary, st.newest))
            self._snap(st, boundary)
            boundary += SNAPSHOT_EVERY
        st.sealed = max(st.sealed, new_sealed)
        if len(st.snapshots) > 2 and learned != target_learned:
            # kept: what a re-issue at hour - L uses, and what the forecasts behind the targets
            # still to learn were published with (issued up to max(ANCHORS) hours before them)
            keep_from = hour - 2 * self.lateness - 2 - max(ANCHORS) - 2 * SNAPSHOT_EVERY
            older = [k for k, (b, _) in enumerate(st.snapshots) if b <= keep_from]
            if older:
                for b, _ in st.snapshots[: older[-1]]:
                    st.params.pop(b, None)
                del st.snapshots[: older[-1]]
        d = hour - st.newest
        if d >= st.ring.shape[0]:
            st.ring[:] = np.nan
        else:
            st.ring[:-d] = st.ring[d:]
            st.ring[-d:] = np.nan
        st.newest = hour

    def _snap(self, st: StationAdaptation, boundary: int) -> None:
        if st.snapshots and st.snapshots[-1][0] >= boundary:
            return
        st.snapshots.append((boundary, st.stats.copy()))

    def _learn_block(self, st: StationAdaptation, first: int, last: int) -> None:
        """Update the statistics with the pairs whose target hours are ``first..last`` (sealed), in
        order, as one vectorised step: the exponentially weighted means are linear recursions
        (x_t = (1 - a_t) x_(t-1) + a_t z_t), computed with cumulative products; the quantile
        trackers add up their steps, which depend only on the published intervals."""
        span = max(ANCHORS)
        i0, i1 = st.row(first), st.row(last)
        if i0 - span < 0:  # targets whose forecasts fall outside the ring (a station's first hours)
            i0 = span
            if i0 > i1:
                return
        first = last - (i1 - i0)
        rows = st.ring[i0 - span : i1 + 1].astype(np.float64)  # [T + span, cols]
        n_t = i1 - i0 + 1
        y = rows[span:, _Y]  # [T]
        seasonal = rows[:n_t, _Y]  # 24 hours before each target
        issued = np.stack([rows[span - h : span - h + n_t] for h in ANCHORS], axis=1)  # [T, A, cols]
        pers, model, mean = issued[:, :, _PERS], issued[:, :, _MODEL : _MODEL + _A], issued[:, :, _MEAN]
        model = np.einsum("taa->ta", model)  # anchor a's own model column
        alone = np.einsum("taa->ta", issued[:, :, _ALONE : _ALONE + _A])
        seas = np.where(np.isnan(seasonal)[:, None], pers, seasonal[:, None])
        # the forecasts as they were published at their issue hours (the snapshots they used)
        # which snapshot an issue hour used depends only on the boundary at or before its limit
        issue_hours = first + np.arange(n_t)[:, None] - np.asarray(ANCHORS)[None, :]  # [T, A]
        keys = _boundary(issue_hours - self.lateness - 1, st.phase)
        distinct = np.unique(keys)
        snaps = [self._snapshot(st, int(k) + self.lateness + 1) for k in distinct]
        which = np.searchsorted(distinct, keys), np.arange(_A)[None, :]
        level = np.array([x[3] for x in snaps], dtype=np.float64)[which[0]]  # [T, A] the level published
        level = np.where(np.isnan(level), mean, level)
        f = np.stack([model, pers, seas, level, alone], axis=2)  # [T, A, K] in EXPERTS order
        valid = ~np.isnan(y)[:, None] & ~np.isnan(pers) & ~np.isnan(model) & ~np.isnan(alone)  # [T, A]
        s = st.stats.astype(np.float64)
        s[:, _LVL], s[:, _LVN] = _level_after(float(s[0, _LVL]), float(s[0, _LVN]), y)
        if not valid.any():
            st.stats = s.astype(np.float32)
            return
        f = np.where(valid[:, :, None], f, 0.0)
        yy = np.where(np.isnan(y), 0.0, y)[:, None]
        e = f - yy[:, :, None]
        vf = valid.astype(np.float64)
        n_before = s[None, :, _N] + np.cumsum(vf, axis=0) - vf  # [T, A]
        alpha = vf * np.maximum(1.0 / (n_before + 1.0), _MSE_ALPHA_MIN)
        beta = vf * np.maximum(1.0 / (n_before + _BIAS_PRIOR_PAIRS), _MSE_ALPHA_MIN)
        tri = np.stack([e[:, :, j] * e[:, :, k] for j, k in _TRI], axis=2)  # [T, A, N_TRI]
        s[:, :_N_TRI] = _ew(s[:, :_N_TRI], alpha, tri)
        s[:, _B0 : _B0 + _K] = _ew(s[:, _B0 : _B0 + _K], beta, e)
        pub = np.array([x[1] for x in snaps], dtype=np.float64)[which]  # [T, A, K + 3]
        cand = np.array([x[2] for x in snaps], dtype=np.float64)[which]
        # how the combination the snapshots proposed did, against the model alone (bias-corrected)
        err_c = (cand[:, :, :_K] * f).sum(axis=2) + cand[:, :, _K] - yy
        err_m = f[:, :, 0] + cand[:, :, _K + 3] - yy  # the model and its bias correction then
        both = np.stack([err_c * err_c, err_m * err_m], axis=2)
        s[:, _MC : _MM + 1] = _ew(s[:, _MC : _MM + 1], alpha, both)
        combo = (pub[:, :, :_K] * f).sum(axis=2)
        center = np.log1p(np.maximum(combo + pub[:, :, _K], 0.0))
        log_y = np.log1p(np.maximum(yy, 0.0))
        widen = issued[:, :, _WIDEN]
        miss_hi = (log_y > center + pub[:, :, _K + 2] * widen).astype(np.float64)
        miss_lo = (log_y < center + pub[:, :, _K + 1] * widen).astype(np.float64)
        s[:, _QHI] += self._step * ((miss_hi - _Q_MISS) * vf).sum(axis=0)
        s[:, _QLO] -= self._step * ((miss_lo - _Q_MISS) * vf).sum(axis=0)
        s[:, _N] += vf.sum(axis=0)
        st.stats = s.astype(np.float32)

    def _snapshot(self, st: StationAdaptation, hour: int) -> _Params:
        """The parameters of the snapshot a forecast at ``hour`` uses: published [H, _K + 3], their
        rows at the anchor horizons and the proposed combination's."""
        limit = hour - self.lateness - 1
        for b, stats in reversed(st.snapshots):
            if b <= limit:
                cached = st.params.get(b)
                if cached is None:
                    cached = st.params[b] = self._params(stats)
                return cached
        return self._prior_cached

    def _snapshot_params(self, st: StationAdaptation, hour: int) -> F32:
        return self._snapshot(st, hour)[0]

    def _params(self, stats: F32) -> _Params:
        """Published [H, _K + 3] (weights, bias, lower and upper offset, interpolated between the
        anchors), and at the anchors the published and the proposed rows. The proposal is the
        minimum-MSE combination; it is published at an anchor unless the model alone (corrected
        by its bias) has done better on the same sealed pairs, then the model alone is."""
        s = stats.astype(np.float64)
        w = _weights_all(s)  # [A, K]
        q = s[:, _QLO : _QHI + 1]
        bias = -(w * s[:, _B0 : _B0 + _K]).sum(axis=1, keepdims=True)
        # proposed rows carry the model's own bias correction last, for the like-for-like rival
        proposed = np.concatenate([w, bias, q, -s[:, _B0 : _B0 + 1]], axis=1)
        alone = (s[:, _N] >= _FALLBACK_PAIRS) & (s[:, _MM] < s[:, _MC])
        model_only = np.zeros_like(proposed)
        model_only[:, 0] = 1.0
        model_only[:, _K] = -s[:, _B0]
        model_only[:, _K + 1 : _K + 3] = q
        per_anchor = np.where(alone[:, None], model_only, proposed)[:, : _K + 3]
        full = (self._interp @ per_anchor).astype(np.float32)
        level = float(stats[0, _LVL]) if stats[0, _LVN] > 0 else math.nan
        return full, full[self._anchor_pos], proposed.astype(np.float32), level

    def current_weights(self, st: StationAdaptation) -> dict[str, list[float]]:
        """What the station's newest forecast uses, per anchor horizon: each expert's weight and
        the bias (for reports and the dashboard). It changes once per learned block: cached."""
        params = self._snapshot_params(st, st.newest)
        if st.view is not None and st.view[0] is params:
            return st.view[1]
        out: dict[str, list[float]] = {"horizons": list(ANCHORS)}
        for k, name in enumerate(EXPERTS):
            out[name] = [round(float(params[h - 1, k]), 4) for h in ANCHORS]
        out["bias"] = [round(float(params[h - 1, _K]), 3) for h in ANCHORS]
        out["pairs"] = [int(st.stats[a, _N]) for a in range(_A)]
        st.view = (params, out)
        return out

    # -- a batch of forecasts, vectorised -------------------------------------------------------
    def combine(self, rows: Sequence[Row], model_point: F32, alone_point: F32 | None = None) -> Combined:
        """The published forecasts of a batch: point, 10 % and 90 % bounds (µg/m³); ``alone_point``:
        the model's forecasts without the network columns (None: the same as ``model_point``)."""
        if not rows:
            empty = np.zeros((0, len(self.horizons)), dtype=np.float32)
            return Combined(empty, empty, empty)
        params = np.stack([r.params for r in rows]).astype(np.float64)  # [B, H, K+3]
        trust = np.array([r.trust for r in rows], dtype=np.float64)
        young = trust < 1.0
        if young.any():  # a young window: the combination moves towards persistence
            t = trust[young][:, None]
            params[young, :, : _K + 1] *= t[:, :, None]
            params[young, :, 1] += 1.0 - t
        pers = np.array([r.persistence for r in rows], dtype=np.float64)[:, None]
        mean = np.array([r.mean for r in rows], dtype=np.float64)[:, None]
        seasonal = np.stack([r.seasonal for r in rows]).astype(np.float64)
        seasonal = np.where(np.isnan(seasonal), pers, seasonal)
        level = np.array([r.level for r in rows], dtype=np.float64)[:, None]
        level = np.where(np.isnan(level), mean, level)
        model = model_point.astype(np.float64)
        alone = model if alone_point is None else alone_point.astype(np.float64)
        experts = (model, pers, seasonal, level, alone)
        point = sum(params[:, :, k] * experts[k] for k in range(_K)) + params[:, :, _K]
        point = np.clip(point, 0.0, None)
        widen = np.array([r.widen for r in rows], dtype=np.float64)[:, None]
        base = np.log1p(point)
        lo = np.expm1(base + params[:, :, _K + 1] * widen)
        hi = np.expm1(base + params[:, :, _K + 2] * widen)
        return Combined(
            point=point.astype(np.float32),
            lo=np.clip(lo, 0.0, point).astype(np.float32),
            hi=np.maximum(hi, point).astype(np.float32),
        )


def station_phase(station_id: str) -> int:
    """The hour of the day (0..SNAPSHOT_EVERY-1) a station's learning blocks end at: a checksum of
    its id, the same on every worker and in the backtest."""
    return zlib.crc32(station_id.encode()) % SNAPSHOT_EVERY


def _boundary(hour: Any, phase: int) -> Any:
    """The last snapshot boundary at or before ``hour`` (an int or an integer array): boundaries
    are the hours h with (h + 1 - phase) % SNAPSHOT_EVERY == 0."""
    return ((hour + 1 - phase) // SNAPSHOT_EVERY) * SNAPSHOT_EVERY - 1 + phase


def _level_after(level: float, n: float, y: npt.NDArray[np.float64]) -> tuple[float, float]:
    """The station's level and its count of observations after the observations ``y`` (in target
    order; NaN: none that hour): a plain mean over the first ones, then exponential weights of
    about 30 days."""
    for v in y[~np.isnan(y)]:
        n += 1.0
        level += max(1.0 / n, _LEVEL_ALPHA_MIN) * (float(v) - level)
    return level, n


def _ew(x0: npt.NDArray[np.float64], a: npt.NDArray[np.float64], z: npt.NDArray[np.float64]) -> Any:
    """x after the steps x <- (1 - a_t) x + a_t z_t, t = 0..T-1, for x0 [A, C], a [T, A], z [T, A, C]."""
    keep = 1.0 - a  # [T, A]
    after = np.cumprod(keep[::-1], axis=0)[::-1]  # prod of keep[t:] ...
    later = np.concatenate([after[1:], np.ones_like(after[:1])], axis=0)  # ... and of keep[t+1:]
    return x0 * after[0][:, None] + (a[:, :, None] * z * later[:, :, None]).sum(axis=0)


def _weights_all(s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """[A, K] minimum-MSE combination weights per anchor from the statistics [A, cols]: the
    covariance of the bias-corrected errors, shrunk towards its diagonal, solved for weights
    summing to one, clipped at zero; blended in linearly from "the model alone" over the first
    _WARMUP_PAIRS pairs, or at once where the model has proven grossly worse than the combination
    (_PROVEN_RATIO)."""
    n = s[:, _N]
    m = np.empty((_A, _K, _K))
    for c, (j, k) in enumerate(_TRI):
        m[:, j, k] = m[:, k, j] = s[:, c]
    b = s[:, _B0 : _B0 + _K]
    # model_alone identical to the model so far (a station with no neighbours): left out, so that
    # a lone station's combination is the one of the four other experts
    twin = (m[:, :, _ALONE_K] == m[:, :, 0]).all(axis=1) & (b[:, _ALONE_K] == b[:, 0])
    m = m - b[:, :, None] * b[:, None, :]
    diag = np.einsum("aii->ai", m)
    m = (1.0 - _SHRINK) * m
    idx = np.arange(_K)
    m[:, idx, idx] += _SHRINK * diag + 1e-3
    m[twin, _ALONE_K, :] = m[twin, :, _ALONE_K] = 0.0
    m[twin, _ALONE_K, _ALONE_K] = 1.0
    try:
        w = np.linalg.solve(m, np.ones((_A, _K, 1)))[:, :, 0]
    except np.linalg.LinAlgError:
        w = 1.0 / np.maximum(np.einsum("aii->ai", m), 1e-9)
    w = np.clip(w, 0.0, None)
    w[twin, _ALONE_K] = 0.0
    total = w.sum(axis=1, keepdims=True)
    alone = np.zeros((_A, _K))
    alone[:, 0] = 1.0
    w = np.where(total > 0, w / np.where(total > 0, total, 1.0), alone)
    combined = np.einsum("ak,akl,al->a", w, m, w)  # the combination's expected squared error
    proven = (n >= _PROVEN_PAIRS) & (m[:, 0, 0] > _PROVEN_RATIO * combined)
    lam = np.where(proven, 1.0, np.minimum(n / _WARMUP_PAIRS, 1.0))[:, None]
    return np.where(n[:, None] > 0, (1.0 - lam) * alone + lam * w, alone)
