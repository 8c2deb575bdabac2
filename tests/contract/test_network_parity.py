"""The network step: training's network columns are the stream's, and the final forecasts of a
network do not depend on the arrival order of its readings within the lateness bound."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from pm25.adapters import RowError, multisite_files, read_multisite
from pm25.features import OWN_FIELDS, without_network
from pm25.schema import Reading
from pm25.settings import Settings
from pm25.stations import read_stations_csv
from stream_processor.backtest import make_engine
from stream_processor.engine import run_offline
from training.dataset import DataConfig, fill_networks, load_series

HOURS = 240


@pytest.fixture(scope="module")
def beijing() -> list[Reading]:
    """The 12 stations' first HOURS hours (from 2013-03-01), hour by hour in station order."""
    out = []
    for path in multisite_files():
        rows = [r for _, r in zip(range(HOURS), read_multisite(path), strict=False) if not isinstance(r, RowError)]
        out += rows
    return sorted(out, key=lambda r: (r.hour, r.station_id))


def test_training_network_columns_equal_the_stream_windows(beijing):
    cfg = DataConfig()
    series = [load_series(p, iter([r for r in beijing if r.station_id in p.name]), cfg) for p in multisite_files()]
    fill_networks(series, beijing, cfg)
    engine = make_engine(Settings(), read_stations_csv().values())
    windows, clocks = {}, {}
    for r in beijing:
        engine.ingest(windows, clocks, r)
    filled = 0
    for s in series:
        w = windows[s.station_id]
        hours = range(w.newest_hour - w.capacity + 1, w.newest_hour + 1)
        stream = np.stack([w.rows[w.index_of(h)] for h in hours])
        train = s.raw[[h - s.hours[0] for h in hours]]
        np.testing.assert_array_equal(stream, train, err_msg=s.station_id)
        filled += int((~np.isnan(stream[:, len(OWN_FIELDS)])).sum())
    assert filled > 12 * 60  # the comparison covers real network columns, not only missing ones


def _final(forecasts) -> dict[tuple[str, int], bytes]:
    return {(f.station_id, f.end_hour): f.value for f in forecasts}


def test_final_forecasts_do_not_depend_on_arrival_order_within_the_bound(beijing):
    settings = Settings()
    meta = read_stations_csv().values()
    lateness = settings.network_lateness_hours
    readings = beijing[: 12 * 120]
    reference = _final(run_offline(make_engine(settings, meta), readings, batch_size=100))
    assert len(reference) >= len(readings) - 12 * lateness  # the last hours may still be open
    rng = random.Random(3)
    for seed in range(4):
        g = random.Random(seed)
        noisy = readings + [r for r in readings if rng.random() < 0.03]  # at-least-once duplicates
        keyed = sorted((r.hour + g.uniform(0, lateness - 1e-9), i, r) for i, r in enumerate(noisy))
        order = [r for _, _, r in keyed]
        assert order != readings
        got = _final(run_offline(make_engine(settings, meta), order, batch_size=37))
        assert got == reference, f"order {seed}"


def test_a_station_without_metadata_is_forecast_alone_on_its_reading(beijing):
    engine = make_engine(Settings(), read_stations_csv().values())
    lone = [Reading("Elsewhere", r.hour, pm25=r.pm25) for r in beijing if r.station_id == "Dongsi"][:60]
    windows, clocks = {}, {}
    issued = [engine.ingest(windows, clocks, r).requests for r in lone]
    assert all(len(reqs) == 1 and reqs[0].end_hour == r.hour for reqs, r in zip(issued, lone, strict=True))
    assert clocks == {} and np.isnan(windows["Elsewhere"].rows[:, len(OWN_FIELDS) :]).all()


def test_stations_farther_apart_than_the_model_learnt_from_are_forecast_as_alone(beijing):
    """A network spread wider than the neighbour bound (pm25.neighbours.MAX_NEIGHBOUR_KM: an
    agency's whole network under one id) gives each station no neighbour: its final forecasts are
    those of the station alone, byte for byte; the same readings with Beijing's coordinates differ."""
    settings = Settings()
    readings = beijing[: 12 * 120]
    meta = sorted(read_stations_csv().values(), key=lambda s: s.station_id)
    spread = [replace(s, latitude=20.0 + i, longitude=100.0) for i, s in enumerate(meta)]  # 111 km apart
    alone = _final(run_offline(make_engine(settings, ()), readings, batch_size=100))
    far = _final(run_offline(make_engine(settings, spread), readings, batch_size=100))
    near = _final(run_offline(make_engine(settings, meta), readings, batch_size=100))
    assert len(far) >= len(readings) - 12 * settings.network_lateness_hours  # the last hours may be open
    assert far == {key: alone[key] for key in far}
    assert sum(near[key] != alone[key] for key in near) > len(near) // 2  # the comparison can fail


def test_the_model_alone_expert_is_its_graph_on_the_window_without_its_network(beijing):
    """Engine.run_model runs each window that holds network columns through the model_alone graph
    (the bundle's smallest ensemble member) as the window reads without them: the same bytes as
    the features of pm25.features.without_network (a lone station's window, and how training
    hides them); a window without any is not run twice."""
    engine = make_engine(Settings(), read_stations_csv().values())
    windows, clocks, requests = {}, {}, []
    for r in beijing[: 12 * 100]:
        requests += engine.ingest(windows, clocks, r).requests
    lone = [Reading("Elsewhere", r.hour, pm25=r.pm25) for r in beijing if r.station_id == "Dongsi"][:60]
    for r in lone:
        requests += engine.ingest(windows, clocks, r).requests
    requests = requests[-200:]
    linked = np.array([not np.isnan(q.raw[:, len(OWN_FIELDS) :]).all() for q in requests])
    assert 0 < linked.sum() < len(requests)
    model = engine.model
    assert model.bundle.alone_onnx_bytes is not None  # the production bundle carries the member graph
    inp, out = engine.run_model(requests, model)
    masked = model.prepare(
        np.stack([without_network(q.raw) for q in requests]), np.array([q.end_hour for q in requests])
    )
    np.testing.assert_array_equal(masked.usable, inp.usable)
    expected = model.run_alone_graph(np.concatenate(masked.x))
    on = linked[inp.usable]
    np.testing.assert_array_equal(out.alone[on], expected[on])
    np.testing.assert_array_equal(out.alone[~on], out.network[~on])
    assert (out.alone[on] != out.network[on]).any(axis=1).mean() > 0.9
    _, lone_only = engine.run_model([q for q, k in zip(requests, linked, strict=True) if not k], model)
    assert lone_only.alone is lone_only.network  # no second run
