"""Station metadata: the CSV reader's errors name the line, distances and neighbour order."""

import random

import pytest

from pm25.stations import (
    BEIJING_STATIONS,
    InvalidStation,
    Station,
    StationFileError,
    distance_km,
    nearest,
    read_stations_csv,
    station_from_json,
    station_from_mapping,
    station_to_json,
)

HEADER = "station_id,name,latitude,longitude,network\n"


def write(tmp_path, text):
    path = tmp_path / "stations.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_file_has_the_twelve_multisite_stations():
    from pm25.adapters import multisite_files

    stations = read_stations_csv(BEIJING_STATIONS)
    data_stations = {p.name.split("_")[2] for p in multisite_files()}
    assert set(stations) == data_stations
    assert {s.network for s in stations.values()} == {"beijing"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("A,a,95,1,n\n", ":2: out_of_range: latitude"),
        ("A,a,1,1,n\nB,b,x,1,n\n", ":3: bad_type: latitude"),
        ("A,a,1,1,\n", ":2: missing_field: missing network"),
        ("A,a,1,1,n\nA,a,2,2,n\n", ":3: station A listed twice"),
        ("bad id,a,1,1,n\n", ":2: bad_station_id"),
        ("", "no stations"),
    ],
)
def test_bad_files_name_the_line(tmp_path, body, message):
    with pytest.raises(StationFileError, match=message):
        read_stations_csv(write(tmp_path, HEADER + body))


def test_missing_column_is_named(tmp_path):
    with pytest.raises(StationFileError, match="header lacks network"):
        read_stations_csv(write(tmp_path, "station_id,name,latitude,longitude\nA,a,1,1\n"))


def test_missing_file_is_a_station_file_error(tmp_path):
    with pytest.raises(StationFileError, match="No such file"):
        read_stations_csv(tmp_path / "absent.csv")


def test_json_round_trip_and_bad_json():
    s = Station("Dongsi", "Dongsi", 39.929, 116.417, "beijing")
    assert station_from_json(station_to_json(s)) == s
    with pytest.raises(InvalidStation, match="bad_json"):
        station_from_json(b"[1, 2]")
    with pytest.raises(InvalidStation, match="bad_type"):
        station_from_mapping({"station_id": "A", "name": "a", "latitude": True, "longitude": 1, "network": "n"})


def test_distance_matches_a_known_value():
    # one degree of latitude is about 111.2 km anywhere; one of longitude shrinks with cos(latitude)
    a = Station("a", "a", 40.0, 116.0, "n")
    assert distance_km(a, Station("b", "b", 41.0, 116.0, "n")) == pytest.approx(111.2, abs=0.1)
    assert distance_km(a, Station("c", "c", 40.0, 117.0, "n")) == pytest.approx(85.2, abs=0.1)
    assert distance_km(a, a) == 0


def test_nearest_is_same_network_sorted_and_independent_of_input_order():
    stations = list(read_stations_csv().values())
    other_network = Station("Far", "far", 39.93, 116.42, "elsewhere")  # next to Dongsi, other network
    dongsi = next(s for s in stations if s.station_id == "Dongsi")
    first = nearest(dongsi, [*stations, other_network], k=4)
    assert [s.station_id for s, _ in first] == ["Nongzhanguan", "Tiantan", "Aotizhongxin", "Guanyuan"]
    assert [d for _, d in first] == sorted(d for _, d in first)
    for seed in range(5):
        shuffled = [*stations, other_network]
        random.Random(seed).shuffle(shuffled)
        assert nearest(dongsi, shuffled, k=4) == first
    twins = [Station(n, n, 40.0, 116.1, "n") for n in ("b", "a")]  # equal distances: by id
    assert [s.station_id for s, _ in nearest(Station("o", "o", 40, 116, "n"), twins, 2)] == ["a", "b"]


def test_a_byte_order_mark_before_the_header_is_not_part_of_it(tmp_path):
    path = tmp_path / "stations.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "A,a,1,1,n\n").encode())
    assert list(read_stations_csv(path)) == ["A"]
