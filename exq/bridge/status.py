"""The status vocabulary of trackers: what a person's Status cell says about whether exq should run the run.

Cells come decorated (`🟡 RUNNING`, `**GATE FAILED**`, `` `DONE` ``, `TODO/REUSE`, `DONE (2026-05-02)`): emphasis,
code marks, emoji and other symbols are dropped, and the cell is read by the longest known phrase it starts with.

    to do (compiled):        (empty), TODO, TODO/REUSE, QUEUED, PENDING, PLANNED, NOT STARTED
    failed (--rerun-failed): FAILED, GATE FAILED, ERROR, OOM
    left alone:              DONE, COMPLETED, REUSE, REUSED, SKIPPED, CANCELLED, PAUSED, BLOCKED, RUNNING,
                             IN PROGRESS, and any word not listed here
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass


class Intent(enum.Enum):
    """What a status asks of exq."""

    TODO = "to do"
    FAILED = "failed"
    LEFT_ALONE = "left alone"


_PHRASES: dict[str, Intent] = {
    "TODO/REUSE": Intent.TODO, "TODO": Intent.TODO, "TO DO": Intent.TODO, "QUEUED": Intent.TODO,
    "PENDING": Intent.TODO, "PLANNED": Intent.TODO, "NOT STARTED": Intent.TODO, "NOT RUN": Intent.TODO,
    "GATE FAILED": Intent.FAILED, "FAILED": Intent.FAILED, "FAIL": Intent.FAILED, "ERROR": Intent.FAILED,
    "OOM": Intent.FAILED,
    "DONE": Intent.LEFT_ALONE, "COMPLETED": Intent.LEFT_ALONE, "COMPLETE": Intent.LEFT_ALONE,
    "REUSED": Intent.LEFT_ALONE, "REUSE": Intent.LEFT_ALONE, "SKIPPED": Intent.LEFT_ALONE, "SKIP": Intent.LEFT_ALONE,
    "CANCELLED": Intent.LEFT_ALONE, "CANCELED": Intent.LEFT_ALONE, "PAUSED": Intent.LEFT_ALONE,
    "BLOCKED": Intent.LEFT_ALONE, "RUNNING": Intent.LEFT_ALONE, "IN PROGRESS": Intent.LEFT_ALONE,
}
_LONGEST_FIRST = sorted(_PHRASES, key=len, reverse=True)


@dataclass(frozen=True)
class RunStatus:
    """A Status cell as read: the phrase it starts with (`GATE FAILED`), or the cleaned cell when unknown."""

    word: str
    intent: Intent
    known: bool

    def __str__(self) -> str:
        return self.word or "no status"


def clean(cell: str) -> str:
    """The cell in upper case without emphasis, code marks, emoji or other symbols; spaces collapsed."""
    kept = [ch if ch == "/" or unicodedata.category(ch)[0] in "LNZ" else " " for ch in cell.replace("_", " ")]
    text = " ".join("".join(kept).split()).upper()
    return re.sub(r"\s*/\s*", "/", text)


def read_status(cell: str) -> RunStatus:
    """What a tracker Status cell means; an unknown word is left alone (exq never guesses a person wants a run)."""
    text = clean(cell)
    if not text:
        return RunStatus("", Intent.TODO, True)
    for phrase in _LONGEST_FIRST:
        if text == phrase or text.startswith(phrase + " ") or text.startswith(phrase + "/"):
            return RunStatus(phrase, _PHRASES[phrase], True)
    return RunStatus(text, Intent.LEFT_ALONE, False)
