"""Pictures: overlays and figures of hierarchies, the demo report, exports and the
HTML viewer. viz reads hierarchies; nothing below it imports viz."""

from castvit.viz.draw import overlay, paint_segments, plot_hierarchy

__all__ = ["overlay", "paint_segments", "plot_hierarchy"]
