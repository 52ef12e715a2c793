"""The bridge: research plans, trackers and workflow gates become queue submissions (public API only)."""
