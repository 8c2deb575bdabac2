"""JSON API and static files of the dashboard (no broker: the state is filled directly)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dashboard.server import STATIC, create_app
from dashboard.state import DashboardState
from pm25.schema import Forecast, HorizonForecast, Reading, hour_to_iso

H0 = 378_360  # 2013-03-01T00Z


def forecast(station: str, issued: int, value: float) -> Forecast:
    return Forecast(
        station,
        hour_to_iso(issued),
        "v1",
        tuple(
            HorizonForecast(
                h, hour_to_iso(issued + h), value + h, value, value + 2 * h, 0, "Unhealthy" if h == 5 else "Moderate"
            )
            for h in range(1, 25)
        ),
    )


def filled() -> DashboardState:
    s = DashboardState(history_hours=48)
    for t in range(60):
        s.add_reading(Reading("Dongsi", H0 + t, pm25=20.0 + t))
        s.add_forecast(forecast("Dongsi", H0 + t, 20.0 + t))
    s.add_reading(Reading("Wanliu", H0, pm25=None))
    s.add_score(
        {
            "station_id": "Dongsi",
            "target_time": hour_to_iso(H0 + 59),
            "skill": [{"h": 1, "n": 5, "rmse": 3.0, "mae": 2.0, "persistence_rmse": 4.0, "persistence_mae": 3.0}],
            "adaptation": {
                "horizons": [1, 24],
                "model": [0.7, 0.2],
                "persistence": [0.3, 0.3],
                "seasonal_24h": [0.0, 0.1],
                "level_30d": [0.0, 0.4],
                "bias": [0.1, -2.0],
                "pairs": [30, 20],
            },
        }
    )
    return s


def run(coro):
    return asyncio.run(coro)


async def _get(path: str, state: DashboardState):
    async with TestClient(TestServer(create_app(None, state))) as client:
        resp = await client.get(path)
        body = await resp.read()
        return resp.status, resp.headers.get("Content-Type", ""), body


def test_api_stations_lists_every_station_with_latest_forecast_and_worst_category():
    import orjson

    status, ctype, body = run(_get("/api/stations", filled()))
    data = orjson.loads(body)
    assert status == 200 and ctype.startswith("application/json")
    by_id = {s["station_id"]: s for s in data["stations"]}
    assert set(by_id) == {"Dongsi", "Wanliu"}
    d = by_id["Dongsi"]
    assert d["forecast"]["issued_at"] == hour_to_iso(H0 + 59) and len(d["forecast"]["horizons"]) == 24
    assert d["worst_next_24h"] == {
        "aqi_us_category": "Unhealthy",
        "aqi_us": 0,
        "h": 5,
        "target_time": hour_to_iso(H0 + 64),
    }
    assert d["latest_reading"]["pm25"] == 79.0 and d["skill_1h"]["rmse"] == 3.0
    assert by_id["Wanliu"]["latest_reading"] is None and by_id["Wanliu"]["forecast"] is None


def test_api_station_detail_has_history_past_forecasts_and_skill():
    import orjson

    status, _, body = run(_get("/api/stations/Dongsi", filled()))
    d = orjson.loads(body)
    assert status == 200
    assert len(d["readings"]) == 48  # bounded history
    assert d["readings"][-1] == {"timestamp": hour_to_iso(H0 + 59), "pm25": 79.0}
    # the forecast made 6 h ahead for the newest hour was issued at H0+53 with value 73+6
    assert d["past_forecasts"]["6"][-1] == {"target_time": hour_to_iso(H0 + 59), "pm25": 79.0}
    assert d["skill"][0]["persistence_rmse"] == 4.0
    assert d["adaptation"]["model"] == [0.7, 0.2]  # how the station weighs the model now


def test_unknown_station_is_404():
    status, _, _ = run(_get("/api/stations/Nowhere", filled()))
    assert status == 404


@pytest.mark.parametrize("path", ["/", "/station/Dongsi", "/static/app.js", "/static/style.css"])
def test_pages_and_assets_are_served(path):
    status, _, body = run(_get(path, filled()))
    assert status == 200 and len(body) > 100


def test_pages_load_nothing_from_the_network():
    for f in Path(STATIC).iterdir():
        text = f.read_text()
        urls = [u for u in re.findall(r"https?://[^\s\"')]+", text) if u != "http://www.w3.org/2000/svg"]
        assert urls == [], f"{f.name} references {urls}"


def test_station_page_shows_location_and_nearest_neighbours_of_its_network():
    import orjson

    from pm25.stations import Station, read_stations_csv

    state = filled()
    for station in read_stations_csv().values():
        state.add_station(station)
    state.add_station(Station("Elsewhere", "other network", 39.93, 116.42, "other"))  # next door, not a neighbour
    state.add_reading(Reading("Nongzhanguan", H0 + 59, pm25=150.0))
    _, _, body = run(_get("/api/stations/Dongsi", state))
    d = orjson.loads(body)
    assert d["location"] == {"name": "Dongsi", "latitude": 39.929, "longitude": 116.417, "network": "beijing"}
    near = d["neighbours"]
    assert [n["station_id"] for n in near][:3] == ["Nongzhanguan", "Tiantan", "Aotizhongxin"]
    assert len(near) == 6 and all(n["station_id"] != "Elsewhere" for n in near)
    assert near[0]["distance_km"] == 3.9 and near[0]["direction"] == "ENE"
    assert near[0]["latest_reading"]["pm25"] == 150.0
    assert near[1]["latest_reading"] is None and near[1]["direction"] == "S"  # Tiantan: no reading yet
    # same network, over 100 km from every other station: beyond what its forecasts read
    state.add_station(Station("Far", "far", 41.5, 116.4, "beijing"))
    state.add_reading(Reading("Far", H0 + 59, pm25=20.0))
    _, _, body = run(_get("/api/stations/Far", state))
    assert orjson.loads(body)["location"]["network"] == "beijing" and orjson.loads(body)["neighbours"] == []
    _, _, body = run(_get("/api/stations/Wanliu", filled()))  # no metadata published: no location
    assert orjson.loads(body)["location"] is None and orjson.loads(body)["neighbours"] == []
