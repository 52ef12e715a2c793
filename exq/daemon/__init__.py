"""The scheduler daemon: its loop and the steps of each turn (placing, limits, probes, hooks, recovery)."""
