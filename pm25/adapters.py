"""Adapters from the data files we know to Readings, and the canonical readings CSV.

* UCI "Beijing PM2.5" (single site, US Embassy, 2010-2014): local time is China Standard Time
  (UTC+8) and is converted to UTC; ``cbwd`` is a combined direction (NW, NE, SE, ``cv`` = calm);
  ``Iws`` is the wind speed cumulated over the hours the direction has not changed, so the hourly
  speed is its increment within a run and the value itself at the start of a run; ``Ir`` counts
  hours of rain (not millimetres), so ``precipitation_mm`` is left missing.
* UCI "Beijing Multi-Site Air-Quality" (12 stations, 2013-2017): ``PM2.5``, ``TEMP``, ``DEWP``,
  ``PRES``, ``RAIN`` (mm), ``wd`` (16 compass points), ``WSPM`` (m/s); also China Standard Time.

Every row goes through :func:`pm25.schema.reading_from_mapping`, so a row the stream would reject
is rejected here too, with its line number.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pm25.schema import CSV_HEADER, InvalidReading, Reading, reading_from_mapping, reading_to_row

__all__ = [
    "DATA_DIR",
    "MULTISITE_STATIONS",
    "SINGLE_SITE_STATION",
    "RowError",
    "multisite_files",
    "read_canonical_csv",
    "read_multisite",
    "read_single_site",
    "single_site_file",
    "write_canonical_csv",
]

#: The data shipped in the repository (see data/README.md for sources and licence).
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SINGLE_SITE_STATION = "USEmbassy"
MULTISITE_STATIONS = (
    "Aotizhongxin",
    "Changping",
    "Dingling",
    "Dongsi",
    "Guanyuan",
    "Gucheng",
    "Huairou",
    "Nongzhanguan",
    "Shunyi",
    "Tiantan",
    "Wanliu",
    "Wanshouxigong",
)
CST = timezone(timedelta(hours=8), "CST")
_SINGLE_DIRS = {"NW": "NW", "NE": "NE", "SE": "SE", "SW": "SW", "cv": "calm"}


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that could not become a Reading."""

    source: str
    line: int
    reason: str
    detail: str


def single_site_file(data_dir: Path = DATA_DIR) -> Path:
    return data_dir / "beijing_pm25" / "PRSA_data_2010.1.1-2014.12.31.csv.gz"


def multisite_files(data_dir: Path = DATA_DIR) -> list[Path]:
    return sorted((data_dir / "beijing_multisite").glob("PRSA_Data_*_20130301-20170228.csv.gz"))


def _open_text(path: Path) -> io.TextIOBase:
    if str(path).endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")  # a spreadsheet's byte-order mark is not a header


def _num(text: str) -> float | None:
    if text in ("", "NA"):
        return None
    return float(text)


def _local_iso(row: dict[str, str]) -> str:
    local = datetime(int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"]), tzinfo=CST)
    return local.isoformat()


def read_single_site(path: Path | None = None) -> Iterator[Reading | RowError]:
    """Readings of the single-site file in file (event-time) order."""
    path = path or single_site_file()
    prev_dir: str | None = None
    prev_iws = 0.0
    with _open_text(path) as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                cbwd = row["cbwd"]
                iws = _num(row["Iws"])
                speed: float | None = None
                if iws is not None:
                    speed = iws - prev_iws if cbwd == prev_dir else iws
                    speed = round(speed, 2) if speed >= 0 else None
                    prev_dir, prev_iws = cbwd, iws
                else:
                    prev_dir = None
                data: dict[str, Any] = {
                    "station_id": SINGLE_SITE_STATION,
                    "timestamp": _local_iso(row),
                    "pm25": _num(row["pm2.5"]),
                    "temperature_c": _num(row["TEMP"]),
                    "dew_point_c": _num(row["DEWP"]),
                    "pressure_hpa": _num(row["PRES"]),
                    "wind_speed_ms": speed,
                    "wind_direction": _SINGLE_DIRS.get(cbwd),
                }
                yield reading_from_mapping(data)
            except (InvalidReading, ValueError, KeyError) as err:
                yield RowError(str(path), line, getattr(err, "reason", "bad_row"), str(err))


def read_multisite(path: Path) -> Iterator[Reading | RowError]:
    """Readings of one multi-site station file in file (event-time) order."""
    with _open_text(path) as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                wd = row["wd"]
                data: dict[str, Any] = {
                    "station_id": row["station"],
                    "timestamp": _local_iso(row),
                    "pm25": _num(row["PM2.5"]),
                    "temperature_c": _num(row["TEMP"]),
                    "dew_point_c": _num(row["DEWP"]),
                    "pressure_hpa": _num(row["PRES"]),
                    "wind_speed_ms": _num(row["WSPM"]),
                    "wind_direction": None if wd in ("", "NA") else wd,
                    "precipitation_mm": _num(row["RAIN"]),
                }
                yield reading_from_mapping(data)
            except (InvalidReading, ValueError, KeyError) as err:
                yield RowError(str(path), line, getattr(err, "reason", "bad_row"), str(err))


def read_canonical_csv(path: Path) -> Iterator[Reading | RowError]:
    """Readings of a canonical CSV (header :data:`pm25.schema.CSV_HEADER`, empty = missing)."""
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
            raise InvalidReading("bad_header", f"{path}: header must be {','.join(CSV_HEADER)}")
        for line, cells in enumerate(reader, start=2):
            try:
                if len(cells) != len(CSV_HEADER):
                    raise InvalidReading("bad_row", f"{len(cells)} cells, expected {len(CSV_HEADER)}")
                data: dict[str, Any] = {"station_id": cells[0], "timestamp": cells[1]}
                for name, cell in zip(CSV_HEADER[2:], cells[2:], strict=True):
                    if cell == "":
                        continue
                    data[name] = cell if name == "wind_direction" else _num(cell)
                yield reading_from_mapping(data)
            except (InvalidReading, ValueError) as err:
                yield RowError(str(path), line, getattr(err, "reason", "bad_number"), str(err))


def write_canonical_csv(path: Path, readings: list[Reading]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for r in readings:
            writer.writerow(reading_to_row(r))
