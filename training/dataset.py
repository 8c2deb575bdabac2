"""Ingestion, validation and supervised samples, built with the shared feature code.

Every sample is a raw window exactly as the stream processor's station buffer holds it (via
``pm25.features.encode_reading``), turned into features by ``pm25.features.make_features``: the
training input is the serving input by construction.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pm25.adapters import RowError, read_single_site, single_site_file
from pm25.features import RAW_FIELDS, encode_reading, make_features
from pm25.schema import Reading

__all__ = [
    "DataConfig",
    "DataReport",
    "DataValidationError",
    "Samples",
    "Series",
    "load_series",
    "make_samples",
    "split_indices",
]

log = logging.getLogger(__name__)


class DataValidationError(ValueError):
    """The dataset violates the expectations in DataConfig; the message is the report."""


@dataclass(frozen=True)
class DataConfig:
    path: Path = field(default_factory=single_site_file)
    train_years: tuple[int, int] = (2010, 2012)
    val_year: int = 2013
    test_year: int = 2014
    max_missing_pm25_rate: float = 0.10
    max_bad_rows: int = 0


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

    @property
    def pm25(self) -> npt.NDArray[np.float32]:
        return self.raw[:, 0]

    def local_years(self) -> npt.NDArray[np.int64]:
        """China Standard Time calendar year of each hour (the dataset's own years)."""
        return ((self.hours + 8) // 24).astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970


def load_series(cfg: DataConfig) -> Series:
    """Read, validate and grid the single-site dataset; raise DataValidationError with a report."""
    readings: list[Reading] = []
    errors: list[RowError] = []
    for item in read_single_site(cfg.path):
        (errors if isinstance(item, RowError) else readings).append(item)  # type: ignore[arg-type]
    if not readings:
        raise DataValidationError(f"{cfg.path}: no readings")
    hours_seen = np.array([r.hour for r in readings], dtype=np.int64)
    first, last = int(hours_seen.min()), int(hours_seen.max())
    hours = np.arange(first, last + 1, dtype=np.int64)
    raw = np.full((len(hours), len(RAW_FIELDS)), np.nan, dtype=np.float32)
    for r in readings:
        raw[r.hour - first] = encode_reading(r)
    duplicates = len(hours_seen) - len(np.unique(hours_seen))
    missing = {name: float(np.isnan(raw[:, i]).mean()) for i, name in enumerate(RAW_FIELDS)}
    report = DataReport(
        rows=len(readings) + len(errors),
        bad_rows=len(errors),
        missing_rate=missing,
        duplicate_hours=duplicates,
        gap_hours=len(hours) - len(np.unique(hours_seen)),
        sha256=hashlib.sha256(Path(cfg.path).read_bytes()).hexdigest(),
    )
    problems = []
    if len(errors) > cfg.max_bad_rows:
        problems.append(f"{len(errors)} bad rows (allowed {cfg.max_bad_rows}); first: {errors[:3]}")
    if duplicates:
        problems.append(f"{duplicates} duplicate hours")
    if missing["pm25"] > cfg.max_missing_pm25_rate:
        problems.append(f"PM2.5 missing rate {missing['pm25']:.1%} > {cfg.max_missing_pm25_rate:.0%}")
    if problems:
        raise DataValidationError("data validation failed:\n  " + "\n  ".join(problems + report.lines()))
    for line in report.lines():
        log.info("data: %s", line)
    return Series(readings[0].station_id, hours, raw, report)


@dataclass(frozen=True)
class Samples:
    """Supervised samples: features [N, W, F], targets [N, H] (NaN = missing), last PM2.5 [N]."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    last_pm25: npt.NDArray[np.float32]
    end_index: npt.NDArray[np.int64]  # index into the series of each sample's last hour


def make_samples(
    series: Series, index: npt.NDArray[np.int64], window_hours: int, horizons: int, max_gap_hours: int
) -> Samples:
    """Samples issued at the given series indices (usable windows only, the stream's rule)."""
    index = index[(index >= window_hours - 1) & (index + horizons < len(series.hours))]
    view = np.lib.stride_tricks.sliding_window_view(series.raw, window_hours, axis=0)  # [T-W+1, C, W]
    raw = np.ascontiguousarray(view[index - window_hours + 1].transpose(0, 2, 1))
    batch = make_features(raw, series.hours[index], max_gap_hours)
    keep = batch.usable
    future = np.lib.stride_tricks.sliding_window_view(series.pm25, horizons)  # [T-H+1, H]
    y = future[index[keep] + 1]
    return Samples(
        x=batch.features[keep],
        y=np.ascontiguousarray(y, dtype=np.float32),
        last_pm25=batch.last_pm25[keep],
        end_index=index[keep],
    )


def split_indices(series: Series, cfg: DataConfig, horizons: int) -> dict[str, npt.NDArray[np.int64]]:
    """Issue-time indices per split, by CST year; a sample whose targets cross into the next
    split is dropped, so no target of one split is seen by another."""
    years = series.local_years()
    idx = np.arange(len(years), dtype=np.int64)
    out = {}
    for name, (y0, y1) in {
        "train": cfg.train_years,
        "val": (cfg.val_year, cfg.val_year),
        "test": (cfg.test_year, cfg.test_year),
    }.items():
        inside = (years >= y0) & (years <= y1)
        last_inside = idx[inside].max()
        out[name] = idx[inside & (idx + horizons <= last_inside)]
    return out
