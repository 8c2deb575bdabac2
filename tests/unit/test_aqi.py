import numpy as np
import pytest

from pm25.aqi import CATEGORIES, us_aqi, us_aqi_array


@pytest.mark.parametrize(
    ("pm25", "aqi", "category"),
    [
        (0.0, 0, "Good"),
        (9.0, 50, "Good"),
        (9.05, 50, "Good"),  # truncated to 9.0 before lookup
        (9.1, 51, "Moderate"),
        (35.4, 100, "Moderate"),
        (35.5, 101, "Unhealthy for Sensitive Groups"),
        (55.4, 150, "Unhealthy for Sensitive Groups"),
        (55.5, 151, "Unhealthy"),
        (125.4, 200, "Unhealthy"),
        (125.5, 201, "Very Unhealthy"),
        (225.4, 300, "Very Unhealthy"),
        (225.5, 301, "Hazardous"),
        (325.4, 500, "Hazardous"),
        (999.0, 500, "Hazardous"),
        (-3.0, 0, "Good"),
    ],
)
def test_epa_2024_breakpoints(pm25, aqi, category):
    assert us_aqi(pm25) == (aqi, category)


def test_aqi_is_monotonic():
    values = [us_aqi(c / 10)[0] for c in range(0, 4000)]
    assert values == sorted(values)
    assert len(CATEGORIES) == 6


def test_vectorised_aqi_equals_scalar():
    values = np.concatenate([np.arange(0, 600, 0.05), [9.05, 35.45, 325.4, 325.5, -1.0]])
    aqi, cat = us_aqi_array(values)
    for v, a, c in zip(values.tolist(), aqi.tolist(), cat.tolist(), strict=True):
        assert (a, CATEGORIES[c]) == us_aqi(v), v
