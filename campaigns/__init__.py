"""Fault campaigns: each runs one fault for real against the exq CLI and prints figures (see README.md)."""
