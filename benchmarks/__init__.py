"""Benchmarks (`pm25 bench`). The naive worker lives here only, as the baseline to measure against."""
