"""Data tests on the real datasets shipped in data/ (counts from data/MANIFEST.md)."""

import gzip
import hashlib

import pytest

from pm25.adapters import (
    MULTISITE_STATIONS,
    RowError,
    multisite_files,
    read_multisite,
    read_single_site,
    single_site_file,
)


def test_single_site_checksum_and_counts():
    with gzip.open(single_site_file()) as fh:
        raw = fh.read()
    assert hashlib.sha256(raw).hexdigest() == "4127f868775e31b3956522adc0ec75af8937dde6a3896e8beed3a376c6d27f1c"
    items = list(read_single_site())
    assert len(items) == 43824 and not any(isinstance(i, RowError) for i in items)
    assert sum(i.pm25 is None for i in items) == 2067
    hours = [i.hour for i in items]
    assert hours == list(range(hours[0], hours[0] + len(hours)))  # hourly, no gaps, UTC
    assert items[0].timestamp == "2009-12-31T16:00:00Z"


@pytest.mark.slow
def test_multisite_files_parse():
    files = multisite_files()
    assert [f.name.split("_")[2] for f in files] == list(MULTISITE_STATIONS)
    items = list(read_multisite(files[0]))
    bad = [i for i in items if isinstance(i, RowError)]
    assert len(items) == 35064 and not bad
    assert sum(i.pm25 is None for i in items) == 925  # Aotizhongxin
