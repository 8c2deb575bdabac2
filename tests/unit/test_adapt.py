"""Online adaptation per station (pm25.adapt): order independence, convergence, coverage, state."""

import random

import numpy as np
import pytest

from pm25.adapt import EXPERTS, SNAPSHOT_EVERY, Adapter, StationAdaptation, station_phase

H = tuple(range(1, 25))


def adapter(lateness: int = 24) -> Adapter:
    return Adapter(lateness_hours=lateness, horizons=H, q_lo=[-0.3] * 5, q_hi=[0.3] * 5)


def series(n: int, seed: int = 0, level: float = 50.0) -> np.ndarray:
    """A daily cycle with autocorrelated noise and a few episodes, never negative."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    noise = np.zeros(n)
    for i in range(1, n):
        noise[i] = 0.9 * noise[i - 1] + rng.normal(0, 0.15)
    return level * np.exp(0.3 * np.sin(t / 24 * 2 * np.pi) + noise)


def replay(a: Adapter, y: np.ndarray, order, model_of, window: int = 48, station: str = "", alone_of=None):
    """The stream's re-issue rule (pm25.window): a reading re-issues every present later hour whose
    window contains it. Returns the last forecast published for each issue hour. ``alone_of``: the
    model's forecast without the network (None: a lone station's, the model's)."""
    st = a.new_state(station)
    out, present, newest = {}, set(), -1
    for r in order:
        present.add(r)
        newest = max(newest, r)
        for t in [r] + [h for h in range(r + 1, min(newest, r + window - 1) + 1) if h in present]:
            past = [y[h] for h in range(max(0, t - window + 1), t + 1) if h in present]
            model = model_of(t)
            alone = None if alone_of is None else alone_of(t)
            row = a.record(
                st,
                t,
                observed=float(y[t]),
                persistence=float(y[t]),
                model=model,
                mean=float(np.mean(past)),
                model_alone=alone,
            )
            c = a.combine([row], model[None], None if alone is None else alone[None])
            out[t] = (c.point[0].copy(), c.lo[0].copy(), c.hi[0].copy())
    return out, st


def test_a_new_station_starts_from_the_model_alone():
    a = adapter()
    st = a.new_state()
    model = np.linspace(30, 60, 24).astype(np.float32)
    row = a.record(st, 1000, observed=10.0, persistence=10.0, model=model, mean=20.0)
    c = a.combine([row], model[None])
    np.testing.assert_allclose(c.point[0], model, rtol=1e-6)
    assert (c.lo[0] < c.point[0]).all() and (c.hi[0] > c.point[0]).all()


def test_final_forecasts_do_not_depend_on_arrival_order_within_the_lateness():
    y = series(900, seed=1)
    a = adapter()

    def model_of(t):
        return np.full(24, 0.6 * y[t] + 5.0, dtype=np.float32)

    clean, _ = replay(a, y, range(len(y)), model_of)
    order = list(range(len(y)))
    rng = random.Random(4)
    for i in range(0, len(order), 8):  # shuffled within blocks of 8 hours (lateness 24 h)
        block = order[i : i + 8]
        rng.shuffle(block)
        order[i : i + 8] = block
    dups = [order[i] for i in rng.sample(range(len(order)), 150)]
    for d in dups:  # duplicates re-sent a few hours later
        order.insert(min(order.index(d) + rng.randrange(1, 12), len(order)), d)
    messy, _ = replay(a, y, order, model_of)
    assert clean.keys() == messy.keys()
    for t in clean:
        for x, z in zip(clean[t], messy[t], strict=True):
            np.testing.assert_array_equal(x, z)


def test_a_biased_model_is_corrected_within_days_to_beat_every_reference():
    """A station at a quarter of the model's idea of the level: the model says 4x the truth."""
    y = series(24 * 40, seed=2, level=12.0)
    a = adapter()

    def model_of(t):
        return np.full(24, 4.0 * y[t], dtype=np.float32)

    out, st = replay(a, y, range(len(y)), model_of)
    late = range(24 * 10, len(y) - 24)  # after ten days
    for h in (1, 6, 24):
        err = np.sqrt(np.mean([(out[t][0][h - 1] - y[t + h]) ** 2 for t in late]))
        pers = np.sqrt(np.mean([(y[t] - y[t + h]) ** 2 for t in late]))
        model = np.sqrt(np.mean([(4.0 * y[t] - y[t + h]) ** 2 for t in late]))
        assert err <= pers * 1.02, (h, err, pers)
        assert err < model / 5
    weights = a.current_weights(st)
    assert weights["model"][0] < 0.05  # the model has been weighed out
    assert set(EXPERTS) <= set(weights)


def test_intervals_cover_80_percent_whatever_the_level():
    for level in (8.0, 200.0):
        y = series(24 * 120, seed=3, level=level)
        a = adapter()
        out, _ = replay(a, y, range(len(y)), lambda t, y=y: np.full(24, y[t], dtype=np.float32))
        late = range(24 * 20, len(y) - 24)
        for h in (1, 12, 24):
            inside = np.mean([out[t][1][h - 1] <= y[t + h] <= out[t][2][h - 1] for t in late])
            assert 0.75 <= inside <= 0.85, (level, h, inside)


def test_the_state_round_trips_and_continues_exactly():
    y = series(600, seed=5)
    a = adapter()

    def model_of(t):
        return np.full(24, 0.8 * y[t], dtype=np.float32)

    whole, st_whole = replay(a, y, range(600), model_of)
    # stop after 300 hours, save the state, restore it in a "new process" and go on
    _, st = replay(a, y, range(300), model_of)
    restored = StationAdaptation.from_bytes(st.to_bytes())
    assert restored.to_bytes() == st.to_bytes()
    for t in range(300, 600):
        model = model_of(t)
        past = [y[h] for h in range(t - 47, t + 1)]
        row = a.record(
            restored, t, observed=float(y[t]), persistence=float(y[t]), model=model, mean=float(np.mean(past))
        )
        np.testing.assert_array_equal(a.combine([row], model[None]).point[0], whole[t][0])
    assert restored.to_bytes() == st_whole.to_bytes()


def test_gaps_widen_the_interval():
    a = adapter()
    st = a.new_state()
    model = np.full(24, 40.0, dtype=np.float32)
    now = a.record(st, 10, observed=40.0, persistence=40.0, model=model, gap_hours=0)
    later = a.record(st, 11, observed=float("nan"), persistence=40.0, model=model, gap_hours=24)
    c = a.combine([now, later], np.stack([model, model]))
    assert (c.hi[1] - c.lo[1] > c.hi[0] - c.lo[0]).all()


def test_unreadable_bytes_are_refused():
    from pm25.adapt import AdaptFormatError

    with pytest.raises(AdaptFormatError):
        StationAdaptation.from_bytes(b"\x09" * 40)
    good = adapter().new_state().to_bytes()
    with pytest.raises(AdaptFormatError):
        StationAdaptation.from_bytes(good[:-3])


def test_stations_learn_at_their_own_hour_of_the_day():
    phases = [station_phase(f"station-{i}") for i in range(1000)]
    counts = np.bincount(phases, minlength=SNAPSHOT_EVERY)
    assert len(counts) == SNAPSHOT_EVERY and counts.min() > 0 and counts.max() < 3 * 1000 / SNAPSHOT_EVERY
    # a network reporting the same hours: in any one hour only the stations of one phase learn
    a = adapter(lateness=2)
    y = series(24 * 6, seed=9)
    ids = [f"station-{i}" for i in range(48)]
    states = {sid: a.new_state(sid) for sid in ids}
    model = np.full(24, 40.0, dtype=np.float32)
    learned_at: dict[int, set[int]] = {}
    for t in range(len(y)):
        for sid in ids:
            st = states[sid]
            before = len(st.snapshots)
            a.record(st, t, observed=float(y[t]), persistence=float(y[t]), model=model, mean=float(y[t]))
            if len(st.snapshots) != before:
                learned_at.setdefault(t, set()).add(st.phase)
    assert len(learned_at) > 20  # learning is spread over the hours of the day ...
    assert all(len(p) == 1 for t, p in learned_at.items() if t > 48)  # ... one phase per hour


def test_order_independence_holds_at_every_phase():
    y = series(400, seed=4)
    a = adapter(lateness=6)
    sid = next(f"s{i}" for i in range(100) if station_phase(f"s{i}") == 13)

    def model_of(t):
        return np.full(24, 0.7 * y[t] + 3.0, dtype=np.float32)

    clean, _ = replay(a, y, range(400), model_of, station=sid)
    rng = random.Random(2)
    order = list(range(400))
    for i in range(0, 400, 5):  # shuffle within the lateness
        block = order[i : i + 5]
        rng.shuffle(block)
        order[i : i + 5] = block
    shuffled, _ = replay(a, y, order, model_of, station=sid)
    for t in range(400):
        np.testing.assert_array_equal(clean[t][0], shuffled[t][0])


def test_states_of_the_earlier_experts_are_refused_with_a_reason():
    """Formats 2 and 3 had the 48-hour mean where format 4 has level_30d, and format 4 had no
    model_alone expert: refused, and the worker starts the station's adaptation afresh
    (stream_processor.processor keeps its window)."""
    from pm25.adapt import AdaptFormatError

    y = series(200, seed=6)
    a = adapter()
    _, st = replay(a, y, range(200), lambda t: np.full(24, y[t], dtype=np.float32))
    v5 = bytearray(st.to_bytes())
    assert v5[0] == 5 and v5[20] == 5  # format 5, five experts
    for old in (3, 4):
        with pytest.raises(AdaptFormatError, match="reads formats"):
            StationAdaptation.from_bytes(bytes([old]) + bytes(v5[1:]))


def test_a_lone_station_gives_the_model_alone_expert_no_weight():
    """Without neighbours the model's forecast without the network is the model's: that expert is
    left out of the combination (no double weight for the model), whether it is passed or not."""
    y = series(24 * 40, seed=7, level=30.0)
    a = adapter()
    model_of = lambda t: np.full(24, 1.5 * y[t], dtype=np.float32)  # noqa: E731 - a model wrong in level
    out_none, st = replay(a, y, range(len(y)), model_of)
    out_same, _ = replay(a, y, range(len(y)), model_of, alone_of=model_of)
    weights = a.current_weights(st)
    assert weights["model_alone"] == [0.0] * len(weights["horizons"])
    assert max(weights["persistence"]) > 0.1  # the other experts are weighed
    for t in out_none:
        np.testing.assert_array_equal(out_none[t][0], out_same[t][0])


def test_the_model_without_the_network_is_weighed_where_it_does_better():
    """A network whose neighbours mislead the model (unrelated sensors): the model's forecast
    without them is weighed up and the combination does better than the model."""
    y = series(24 * 80, seed=8)
    rng = np.random.default_rng(9)
    misled = rng.normal(0, 0.5, len(y))

    def model_of(t):
        return np.full(24, y[t] * np.exp(misled[t]), dtype=np.float32)

    def alone_of(t):
        return np.full(24, y[t], dtype=np.float32)

    out, st = replay(a := adapter(), y, range(len(y)), model_of, alone_of=alone_of)
    weights = a.current_weights(st)
    assert all(wa > 2 * wm for wa, wm in zip(weights["model_alone"], weights["model"], strict=True)), weights
    late = range(24 * 40, len(y) - 24)
    for h in (1, 12, 24):
        err = np.sqrt(np.mean([(out[t][0][h - 1] - y[t + h]) ** 2 for t in late]))
        model = np.sqrt(np.mean([(model_of(t)[h - 1] - y[t + h]) ** 2 for t in late]))
        assert err < 0.8 * model, (h, err, model)


def test_the_level_expert_follows_the_station_level():
    """The level_30d expert is the station's own long-run level, learned from sealed hours only:
    a plain mean at first, then about 30 days of exponential memory."""
    a = adapter(lateness=2)
    st = a.new_state()
    rows = []
    for t in range(24 * 4):
        v = 20.0 if t < 48 else 80.0
        rows.append(a.record(st, t, observed=v, persistence=v, model=np.full(24, v, dtype=np.float32), mean=v))
    assert np.isnan(rows[0].level)  # nothing sealed yet: the combination uses the 48-hour mean
    learned = [r.level for r in rows if not np.isnan(r.level)]
    assert learned and learned[0] == pytest.approx(20.0)
    assert 20.0 < rows[-1].level < 80.0  # the later, higher hours pull it up, gradually


def test_a_young_window_moves_the_forecast_towards_persistence():
    """Few PM2.5 observations in the window (a new station's first hours): the model reads mostly
    imputed hours, so its forecast is trusted in proportion to the observations (12 for full)."""
    a = adapter()
    model = np.full(24, 80.0, dtype=np.float32)
    points = []
    for obs in (3, 6, 12, 40, None):
        st = a.new_state("s")
        row = a.record(st, 100, observed=40.0, persistence=40.0, model=model, observations=obs)
        points.append(float(a.combine([row], model[None, :]).point[0, 0]))
    assert points == pytest.approx([50.0, 60.0, 80.0, 80.0, 80.0])  # 40 + share x (80 - 40)
