"""The static feature dashboard (``actstore dashboard``): HTML pages with inline SVG plots, no server, no CDN.

The velocity a feature writes is read by ``capture.feature_velocity`` (model layouts live in capture) and handed in
as ``write_dashboard(..., velocity=...)``; this package never imports capture.
"""

from ._site import DashboardConfig, write_dashboard

__all__ = ["DashboardConfig", "write_dashboard"]
