"""Live dashboard: a small process that follows the readings, forecast and score topics and serves
an overview page, a page per station and a JSON API (`pm25 dashboard`)."""

from dashboard.state import DashboardState

__all__ = ["DashboardState"]
