"""Durable state: the journal and snapshot, atomic file writes, and the intake of submissions and requests."""
