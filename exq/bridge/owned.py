"""Cells a person and exq share (tracker Notes, a results Key Metric, a gate's Evidence): exq owns only its part.

exq's part is the end of the cell, from the marker `exq:` (at the start, or after ` · `). Everything before it
is the person's and is kept byte for byte; write your own words before exq's part, never after it.

    Loss spiked at step 3k, restarted from `ckpt/step2k.pt` · exq: top1 70.1 ± 0.3 (3 seeds); 3 attempts
"""

from __future__ import annotations

import re

MARK = "exq:"
SEPARATOR = " \u00b7 "
_OURS = re.compile(r"(?:^|\s*\u00b7\s*)exq:(?:\s|$)")
_LEGACY = re.compile(r"^exq submission \d+\b")
"""How exq wrote a gate's Evidence before it shared the cell: the whole cell was exq's."""


def person_part(cell: str) -> str:
    """The cell without exq's part (trimmed at its end only)."""
    if _LEGACY.match(cell):
        return ""
    found = _OURS.search(cell)
    return (cell[: found.start()] if found else cell).rstrip()


def exq_part(cell: str) -> str:
    """exq's part of the cell, without the marker; empty when it has none."""
    if _LEGACY.match(cell):
        return cell
    found = _OURS.search(cell)
    return cell[found.end():].strip() if found else ""


def merge(cell: str, ours: str) -> str:
    """The cell with exq's part set to `ours` (removed when empty) and the person's text kept."""
    person = person_part(cell)
    if not ours:
        return person
    mine = f"{MARK} {ours}"
    return f"{person}{SEPARATOR}{mine}" if person else mine
