"""Plots for the model card: skill by horizon against the baselines, interval coverage, and
forecast against actual for two fixed sample weeks of the test year (chosen by date, not by
performance: the first full weeks of January and July)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt

from training.metrics import REPORT_HORIZONS

__all__ = ["card_plots"]


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def card_plots(
    metrics: dict[str, Any],
    test_hours: npt.NDArray[np.int64],
    actual: npt.NDArray[np.floating],
    point: npt.NDArray[np.floating],
    lo: npt.NDArray[np.floating],
    hi: npt.NDArray[np.floating],
) -> dict[str, bytes]:
    """PNG files by name. ``test_hours`` are the issue hours (epoch, UTC) of the test samples;
    ``actual``/``point``/``lo``/``hi`` are [N, 24]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(7, 4))
    hs = list(REPORT_HORIZONS)
    for name, style in (
        ("model", "o-"),
        ("gradient_boosting", "s--"),
        ("persistence", "^:"),
        ("seasonal_naive_24h", "x:"),
    ):
        if name in metrics["test"]:
            ax.plot(hs, [metrics["test"][name]["rmse"][h - 1] for h in hs], style, label=name)
    ax.set(xlabel="horizon (h)", ylabel="RMSE (µg/m³)", title="Test year: RMSE by horizon")
    ax.grid(alpha=0.3)
    ax.legend()
    out["card/skill_vs_horizon.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split in ("val", "test"):
        ax.plot(range(1, 25), np.array(metrics[split]["model"]["coverage_80"]) * 100, "o-", label=split)
    ax.axhspan(75, 85, color="green", alpha=0.15)
    ax.axhline(80, color="k", lw=0.8)
    ax.set(xlabel="horizon (h)", ylabel="%", ylim=(50, 100), title="80 % interval coverage")
    ax.legend()
    out["card/coverage.png"] = _png(fig)

    days = test_hours // 24
    weekday = (days + 3) % 7  # 0 = Monday
    months = days.astype("datetime64[D]").astype("datetime64[M]").astype(int) % 12
    fig, axes = plt.subplots(2, 1, figsize=(11, 6))
    for ax, month, label in zip(axes, (0, 6), ("January", "July"), strict=True):
        candidates = np.flatnonzero((months == month) & (weekday == 0) & (test_hours % 24 == 0))
        if not len(candidates):
            continue
        start = test_hours[candidates[0]]
        sel = (test_hours >= start) & (test_hours < start + 7 * 24)
        t = (test_hours[sel] - start) / 24
        ax.plot(t + 1 / 24, actual[sel, 0], "k-", lw=1.2, label="actual")
        ax.plot(t + 1 / 24, point[sel, 0], "-", color="tab:orange", lw=1, label="forecast 1 h ahead")
        ax.plot(t + 1, point[sel, 23], "-", color="tab:blue", lw=1, label="forecast 24 h ahead")
        ax.fill_between(t + 1, lo[sel, 23], hi[sel, 23], color="tab:blue", alpha=0.15, label="80 % band (24 h)")
        ax.set(title=f"Test year, first full week of {label}", xlabel="days", ylabel="µg/m³")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8)
    out["card/sample_weeks.png"] = _png(fig)
    return out
