"""exq: a GPU experiment queue daemon for ML researchers."""

__version__ = "0.1.0"
