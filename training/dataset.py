"""Ingestion, validation and supervised samples, built with the shared feature code.

Every sample is a raw window exactly as the stream processor's station buffer holds it (via
``pm25.features.encode_reading``), turned into features by ``pm25.features.make_features``: the
training input is the serving input by construction.

The data are every station the repository ships: the single-site file (US Embassy, 2010-2014) and
the 12 multi-site stations (2013-03 to 2017-02). The split is by local (China Standard Time) date
and by station:

* train: every hour before 2015-03-01, except the stations kept out as *new stations*;
* validation (selection, calibration, every tuning): 2015-03-01 to 2016-02-29, multi-site, without
  the new stations;
* test: 2016-03-01 to 2017-02-28, all 12 multi-site stations, scored once for the report.

A sample belongs to a split when its issue hour and all its target hours are inside it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pm25.adapters import CST, RowError, multisite_files, read_multisite, read_single_site, single_site_file
from pm25.features import OWN_FIELDS, RAW_FIELDS, WEATHER_FIELDS, encode_reading, make_features, without_network
from pm25.schema import Reading
from pm25.stations import BEIJING_STATIONS, read_stations_csv

__all__ = [
    "SPLIT_ID",
    "DataConfig",
    "DataReport",
    "DataValidationError",
    "Samples",
    "Series",
    "concat_samples",
    "is_experiment_split",
    "load_all",
    "load_series",
    "local_hour",
    "make_samples",
    "split_id_of",
    "split_samples",
]

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
#: the shipped split (a bundle's spec records the one it was selected on)
SPLIT_ID = "multisite-v1: train < 2015-03-01 (without new stations), val 2015-03-01..2016-02-29, test 2016-03..2017-02"
_SHIFTED = "shifted: "


class DataValidationError(ValueError):
    """The dataset violates the expectations in DataConfig; the message is the report."""


def split_id_of(d: DataConfig) -> str:
    """SPLIT_ID for the shipped split; another split (``pm25 train --shift-years``) names its dates."""
    if (d.val_start, d.test_start, d.test_end) == (DataConfig.val_start, DataConfig.test_start, DataConfig.test_end):
        return SPLIT_ID
    return f"{_SHIFTED}train < {d.val_start}, val {d.val_start}..{d.test_start}, test {d.test_start}..{d.test_end}"


def is_experiment_split(split: str) -> bool:
    """Whether a bundle's split id is a shifted split's (an experiment: never promoted)."""
    return split.startswith(_SHIFTED)


def local_hour(day: date) -> int:
    """Epoch hour (UTC) of local midnight (China Standard Time) of ``day``."""
    return int(datetime(day.year, day.month, day.day, tzinfo=CST).timestamp()) // 3600


@dataclass(frozen=True)
class DataConfig:
    single_site: Path | None = field(default_factory=single_site_file)
    multisite: tuple[Path, ...] = field(default_factory=lambda: tuple(multisite_files()))
    #: local dates: validation starts, test starts, test ends (exclusive)
    val_start: date = date(2015, 3, 1)
    test_start: date = date(2016, 3, 1)
    test_end: date = date(2017, 3, 1)
    #: kept out of training and selection altogether; scored in the test year only
    new_stations: tuple[str, ...] = ("Dingling", "Huairou", "Gucheng")
    max_missing_pm25_rate: float = 0.10
    max_bad_rows: int = 0
    #: every n-th issue hour of the training split becomes a sample (neighbouring windows are
    #: nearly identical; this bounds training time on 2 cores)
    train_stride: int = 2
    #: share of training windows whose newest PM2.5 hours are hidden (a synthetic trailing gap of
    #: 1..max_gap_hours), so the model learns to forecast through gaps as the stream must
    gap_augment: float = 0.15
    #: share of training windows with weather fields hidden for the whole window (half of them all
    #: fields, half each field with probability 1/2), so the model learns to forecast for stations
    #: that do not report them
    weather_dropout: float = 0.6
    #: the station metadata whose networks give the multi-site stations their network columns
    #: (stream_processor.networks; None: every station alone)
    stations_csv: Path | None = field(default_factory=lambda: BEIJING_STATIONS)
    network_lateness_hours: int = 2
    network_neighbours: int = 11
    #: share of training windows with the network columns hidden (a station forecast alone)
    network_dropout: float = 0.3

    def bounds(self) -> dict[str, tuple[int, int]]:
        """Epoch-hour [start, end) of each split's issue and target hours."""
        return {
            "train": (-(2**40), local_hour(self.val_start)),
            "val": (local_hour(self.val_start), local_hour(self.test_start)),
            "test": (local_hour(self.test_start), local_hour(self.test_end)),
        }


@dataclass(frozen=True)
class DataReport:
    rows: int
    bad_rows: int
    missing_rate: dict[str, float]
    duplicate_hours: int
    gap_hours: int
    sha256: str

    def lines(self) -> list[str]:
        miss = ", ".join(f"{k} {v:.1%}" for k, v in self.missing_rate.items())
        return [
            f"rows {self.rows}, bad rows {self.bad_rows}, duplicate hours {self.duplicate_hours}, "
            f"missing hours {self.gap_hours}",
            f"missing: {miss}",
            f"sha256 {self.sha256}",
        ]


@dataclass(frozen=True)
class Series:
    """A continuous hourly series of one station (missing hours are NaN rows)."""

    station_id: str
    hours: npt.NDArray[np.int64]  # [T] consecutive epoch hours
    raw: npt.NDArray[np.float32]  # [T, len(RAW_FIELDS)]
    report: DataReport
    file: str = ""

    @property
    def pm25(self) -> npt.NDArray[np.float32]:
        return self.raw[:, 0]


def load_series(path: Path, items: Iterable[Reading | RowError], cfg: DataConfig) -> Series:
    """Validate and grid one station's readings; raise DataValidationError with a report."""
    readings: list[Reading] = []
    errors: list[RowError] = []
    for item in items:
        (errors if isinstance(item, RowError) else readings).append(item)  # type: ignore[arg-type]
    if not readings:
        raise DataValidationError(f"{path}: no readings")
    hours_seen = np.array([r.hour for r in readings], dtype=np.int64)
    first, last = int(hours_seen.min()), int(hours_seen.max())
    hours = np.arange(first, last + 1, dtype=np.int64)
    raw = np.full((len(hours), len(RAW_FIELDS)), np.nan, dtype=np.float32)
    for r in readings:
        raw[r.hour - first] = encode_reading(r)
    duplicates = len(hours_seen) - len(np.unique(hours_seen))
    missing = {name: float(np.isnan(raw[:, i]).mean()) for i, name in enumerate(OWN_FIELDS)}
    report = DataReport(
        rows=len(readings) + len(errors),
        bad_rows=len(errors),
        missing_rate=missing,
        duplicate_hours=duplicates,
        gap_hours=len(hours) - len(np.unique(hours_seen)),
        sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest(),
    )
    problems = []
    if len(errors) > cfg.max_bad_rows:
        problems.append(f"{len(errors)} bad rows (allowed {cfg.max_bad_rows}); first: {errors[:3]}")
    if duplicates:
        problems.append(f"{duplicates} duplicate hours")
    if missing["pm25"] > cfg.max_missing_pm25_rate:
        problems.append(f"PM2.5 missing rate {missing['pm25']:.1%} > {cfg.max_missing_pm25_rate:.0%}")
    if problems:
        raise DataValidationError(f"{path}: data validation failed:\n  " + "\n  ".join(problems + report.lines()))
    log.info("data %s (%s): %s", Path(path).name, readings[0].station_id, "; ".join(report.lines()))
    return Series(readings[0].station_id, hours, raw, report, Path(path).name)


def load_all(cfg: DataConfig) -> list[Series]:
    """Every station of the configuration: the single-site file first, then the multi-site files,
    whose network columns are filled as the stream fills them (:func:`fill_networks`)."""
    out = []
    if cfg.single_site is not None:
        out.append(load_series(cfg.single_site, read_single_site(cfg.single_site), cfg))
    readings: list[Reading] = []
    for path in cfg.multisite:
        items = list(read_multisite(path))
        out.append(load_series(path, items, cfg))
        readings += [r for r in items if not isinstance(r, RowError)]
    if cfg.stations_csv is not None:
        fill_networks(out, readings, cfg)
    return out


def fill_networks(series: Sequence[Series], readings: list[Reading], cfg: DataConfig) -> dict[str, Any]:
    """The network columns of every series (in place): the readings replayed hour by hour (each
    hour's in station order, as the replay producer sends them) through the engine's network step."""
    from stream_processor.networks import Networks, network_columns

    assert cfg.stations_csv is not None
    networks = Networks(
        read_stations_csv(cfg.stations_csv).values(),
        lateness_hours=cfg.network_lateness_hours,
        neighbours=cfg.network_neighbours,
    )
    by_id = {s.station_id: s for s in series}

    def row_of(station_id: str, hour: int) -> npt.NDArray[np.float32] | None:
        s = by_id.get(station_id)
        if s is None or not s.hours[0] <= hour <= s.hours[-1]:
            return None
        return s.raw[hour - s.hours[0]]

    log.info("data: network columns of %d stations (%d readings) ...", len(networks), len(readings))
    return network_columns(sorted(readings, key=lambda r: (r.hour, r.station_id)), row_of, networks)


@dataclass(frozen=True)
class Samples:
    """Supervised samples: features [N, W, F], targets [N, H] (NaN = missing), last PM2.5 [N]."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    last_pm25: npt.NDArray[np.float32]
    end_hour: npt.NDArray[np.int64]  # epoch hour of each sample's issue time
    station: npt.NDArray[np.int64]  # index into the station list of each sample
    seasonal: npt.NDArray[np.float32]  # [N, H] PM2.5 24 h before each target (carried forward)
    level: npt.NDArray[np.float32]  # [N] the window's level (pm25.features: the target's unit)


def _carried(pm: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    idx = np.where(~np.isnan(pm), np.arange(len(pm)), 0)
    np.maximum.accumulate(idx, out=idx)
    return pm[idx]


def _hide_weather(raw: npt.NDArray[np.float32], share: float, rng: np.random.Generator) -> None:
    """Hide whole weather fields in ``share`` of the windows (in place): in half of them every
    field (a PM2.5-only sensor), in the other half each field with probability 1/2."""
    fields = list(WEATHER_FIELDS.values())
    picked = np.flatnonzero(rng.random(len(raw)) < share)
    drop = rng.random((len(picked), len(fields))) < 0.5
    drop[rng.random(len(picked)) < 0.5] = True
    for i, row in zip(picked.tolist(), drop, strict=True):
        for cols, hidden in zip(fields, row.tolist(), strict=True):
            if hidden:
                raw[i, :, list(cols)] = np.nan


def make_samples(
    series: Series,
    index: npt.NDArray[np.int64],
    window_hours: int,
    horizons: int,
    max_gap_hours: int,
    names: Sequence[str],
    station: int = 0,
    gap_augment: float = 0.0,
    seed: int = 0,
    weather_dropout: float = 0.0,
    network_dropout: float = 0.0,
) -> Samples:
    """Samples issued at the given series indices (usable windows only, the stream's rule).

    ``gap_augment``: that share of windows gets its newest 1..max_gap_hours PM2.5 hours hidden."""
    index = index[(index >= window_hours - 1) & (index + horizons < len(series.hours))]
    view = np.lib.stride_tricks.sliding_window_view(series.raw, window_hours, axis=0)  # [T-W+1, C, W]
    raw = np.ascontiguousarray(view[index - window_hours + 1].transpose(0, 2, 1))
    if gap_augment > 0 and len(index):
        rng = np.random.default_rng(seed)
        hide = np.flatnonzero(rng.random(len(index)) < gap_augment)
        k = rng.integers(1, max_gap_hours + 1, size=len(hide))
        for i, n in zip(hide.tolist(), k.tolist(), strict=True):
            raw[i, window_hours - n :, 0] = np.nan
    if weather_dropout > 0 and len(index):
        _hide_weather(raw, weather_dropout, np.random.default_rng(seed + 1_000_003))
    if network_dropout > 0 and len(index):
        alone = np.random.default_rng(seed + 2_000_003).random(len(index)) < network_dropout
        raw[alone] = without_network(raw[alone])
    batch = make_features(raw, series.hours[index], max_gap_hours, names)
    keep = batch.usable
    future = np.lib.stride_tricks.sliding_window_view(series.pm25, horizons)  # [T-H+1, H]
    y = future[index[keep] + 1]
    seasonal = np.lib.stride_tricks.sliding_window_view(_carried(series.pm25), horizons)[index[keep] + 1 - 24]
    return Samples(
        x=batch.features[keep],
        y=np.ascontiguousarray(y, dtype=np.float32),
        last_pm25=batch.last_pm25[keep],
        end_hour=series.hours[index[keep]],
        station=np.full(int(keep.sum()), station, dtype=np.int64),
        seasonal=np.ascontiguousarray(seasonal, dtype=np.float32),
        level=batch.level[keep],
    )


def concat_samples(parts: Sequence[Samples]) -> Samples:
    return Samples(
        x=np.concatenate([p.x for p in parts]),
        y=np.concatenate([p.y for p in parts]),
        last_pm25=np.concatenate([p.last_pm25 for p in parts]),
        end_hour=np.concatenate([p.end_hour for p in parts]),
        station=np.concatenate([p.station for p in parts]),
        seasonal=np.concatenate([p.seasonal for p in parts]),
        level=np.concatenate([p.level for p in parts]),
    )


def split_samples(
    stations: Sequence[Series],
    cfg: DataConfig,
    window_hours: int,
    horizons: int,
    max_gap_hours: int,
    names: Sequence[str],
    splits: Sequence[str] = SPLITS,
    seed: int = 0,
) -> dict[str, Samples]:
    """Samples per split over all stations (see the module docstring for the rules)."""
    bounds = cfg.bounds()
    out = {}
    for split in splits:
        lo, hi = bounds[split]
        parts = []
        for k, s in enumerate(stations):
            if split != "test" and s.station_id in cfg.new_stations:
                continue
            if split != "train" and s.file == (cfg.single_site.name if cfg.single_site else None):
                continue
            idx = np.flatnonzero((s.hours >= lo) & (s.hours + horizons < hi)).astype(np.int64)
            if split == "train":
                idx = idx[:: cfg.train_stride]
            augment = cfg.gap_augment if split == "train" else 0.0
            dropout = cfg.weather_dropout if split == "train" else 0.0
            alone = cfg.network_dropout if split == "train" else 0.0
            parts.append(
                make_samples(s, idx, window_hours, horizons, max_gap_hours, names, k, augment, seed + k, dropout, alone)
            )
        out[split] = concat_samples(parts)
    return out
