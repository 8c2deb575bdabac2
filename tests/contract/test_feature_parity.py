"""Train/serve parity: the windows and features training builds from the dataset are exactly the
ones the stream builds from the same readings arriving one by one."""

import numpy as np

from pm25.adapters import multisite_files, read_multisite
from pm25.features import make_features
from pm25.window import apply_reading
from training.dataset import DataConfig, load_series, make_samples
from training.train import MODEL_FEATURES

W, GAP = 48, 36


def test_training_samples_equal_stream_windows():
    path = next(p for p in multisite_files() if "Dingling" in p.name)
    series = load_series(path, read_multisite(path), DataConfig())
    start = int(np.flatnonzero(np.isnan(series.pm25))[0]) - 300  # a stretch with gaps in PM2.5
    readings = [r for _, r in zip(range(start + 900), read_multisite(path), strict=False)][start:]
    assert sum(r.pm25 is None for r in readings) > 0
    state = None
    stream_raw, ends = [], []
    for reading in readings:
        state, _, hours = apply_reading(state, reading, capacity=W + 24, lateness_hours=24, window_hours=W)
        for h in hours:
            stream_raw.append(state.window(h, W).copy())
            ends.append(h)
    stream_raw = np.stack(stream_raw)[W:]  # skip the warm-up, whose windows start before the slice
    ends = np.array(ends[W:])
    index = ends - series.hours[0]
    samples = make_samples(series, index, W, 24, GAP, MODEL_FEATURES)
    stream = make_features(stream_raw, ends, GAP, MODEL_FEATURES)
    assert len(samples.end_hour) == int(stream.usable.sum()) > 400
    np.testing.assert_array_equal(samples.x, stream.features[stream.usable])
    np.testing.assert_array_equal(samples.last_pm25, stream.last_pm25[stream.usable])
    np.testing.assert_array_equal(samples.level, stream.level[stream.usable])  # the target's unit
