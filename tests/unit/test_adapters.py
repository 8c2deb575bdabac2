from pathlib import Path

from pm25.adapters import RowError, read_canonical_csv, read_multisite, read_single_site, write_canonical_csv
from pm25.schema import CSV_HEADER, iso_to_hour

SINGLE = """No,year,month,day,hour,pm2.5,DEWP,TEMP,PRES,cbwd,Iws,Is,Ir
1,2010,1,2,0,129,-16,-4,1020,SE,1.79,0,0
2,2010,1,2,1,148,-15,-4,1020,SE,2.68,0,0
3,2010,1,2,2,159,-11,-5,1021,SE,3.57,0,0
4,2010,1,2,3,NA,-7,-5,1022,cv,0.89,0,0
5,2010,1,2,4,138,-7,-5,1022,cv,1.78,0,0
6,2010,1,2,5,109,-7,-6,1022,NW,4.92,0,0
"""

MULTI = """"No","year","month","day","hour","PM2.5","PM10","SO2","NO2","CO","O3","TEMP","PRES","DEWP","RAIN","wd","WSPM","station"
1,2013,3,1,0,4,4,4,7,300,77,-0.7,1023,-18.8,0,"NNW",4.4,"Aotizhongxin"
2,2013,3,1,1,NA,8,4,7,300,77,-1.1,1023.2,-18.2,0.3,NA,4.7,"Aotizhongxin"
3,2013,3,1,2,7,7,5,10,300,73,-1.1,1023.5,-18.2,0,"XX",5.6,"Aotizhongxin"
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text.replace("\n", "\r\n"))
    return p


def test_single_site_converts_cst_to_utc(tmp_path):
    rows = list(read_single_site(_write(tmp_path, "s.csv", SINGLE)))
    assert rows[0].timestamp == "2010-01-01T16:00:00Z"  # 2010-01-02 00:00 China Standard Time
    assert [r.hour for r in rows] == list(range(rows[0].hour, rows[0].hour + 6))


def test_single_site_calm_and_hourly_speed_from_cumulated_iws(tmp_path):
    rows = list(read_single_site(_write(tmp_path, "s.csv", SINGLE)))
    assert [r.wind_direction for r in rows] == ["SE", "SE", "SE", "calm", "calm", "NW"]
    # first hour of a run is the value itself, then the increments
    assert [r.wind_speed_ms for r in rows] == [1.79, 0.89, 0.89, 0.89, 0.89, 4.92]
    assert rows[3].pm25 is None
    assert all(r.precipitation_mm is None for r in rows)  # Ir counts hours, not mm


def test_multisite_fields_and_bad_rows_reported(tmp_path):
    items = list(read_multisite(_write(tmp_path, "m.csv", MULTI)))
    good, bad = items[:2], items[2]
    assert good[0].station_id == "Aotizhongxin" and good[0].timestamp == "2013-02-28T16:00:00Z"
    assert good[0].wind_direction == "NNW" and good[0].wind_speed_ms == 4.4
    assert good[1].pm25 is None and good[1].wind_direction is None and good[1].precipitation_mm == 0.3
    assert isinstance(bad, RowError) and bad.line == 4 and bad.reason == "bad_wind_direction"


def test_canonical_csv_round_trip(tmp_path):
    readings = [r for r in read_multisite(_write(tmp_path, "m.csv", MULTI)) if not isinstance(r, RowError)]
    out = tmp_path / "c.csv"
    write_canonical_csv(out, readings)
    assert out.read_text().splitlines()[0] == ",".join(CSV_HEADER)
    assert list(read_canonical_csv(out)) == readings


def test_canonical_csv_reports_bad_rows(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(",".join(CSV_HEADER) + "\nA,2013-03-01T00:00:00Z,abc,,,,,,\nA,2013-03-01T01:00:00Z,5,,,,,,\n")
    items = list(read_canonical_csv(p))
    assert isinstance(items[0], RowError) and items[0].line == 2
    assert items[1].hour == iso_to_hour("2013-03-01T01:00:00Z")


def test_a_csv_saved_by_a_spreadsheet_with_a_byte_order_mark_reads_the_same(tmp_path):
    readings = [r for r in read_multisite(_write(tmp_path, "m.csv", MULTI)) if not isinstance(r, RowError)]
    out = tmp_path / "c.csv"
    write_canonical_csv(out, readings)
    marked = tmp_path / "bom.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + out.read_bytes())
    assert list(read_canonical_csv(marked)) == readings
