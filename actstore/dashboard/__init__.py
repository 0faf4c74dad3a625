"""The static feature dashboard (``actstore dashboard``): HTML pages with inline SVG plots, no server, no CDN."""

from ._lens import feature_velocity
from ._site import DashboardConfig, write_dashboard

__all__ = ["DashboardConfig", "feature_velocity", "write_dashboard"]
