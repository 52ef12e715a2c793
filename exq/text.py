"""Short text for one line of a table or a message."""

from __future__ import annotations


def one_line(text: str, limit: int) -> str:
    """`text` with its whitespace runs (line breaks included) collapsed, cut to `limit` characters with '…'."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"
