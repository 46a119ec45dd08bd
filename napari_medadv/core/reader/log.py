"""``reader_study.csv``: one row per answered trial, rewritten atomically after each answer
(temporary file + rename, :func:`napari_medadv.core.files.atomic_write`), so closing the app
mid-study loses at most the trial on screen and a reader never sees a half-written file.

Columns (exactly these, in this order)::

    trial, case, source, target_psnr, psnr, shown_left, answer, correct, confidence, seconds

``shown_left``: what the left image was in pair mode (``altered``/``original``), or what the
one image was in single mode; ``answer``: ``left``/``right`` (pair) or ``altered``/``original``
(single); ``correct``: 1 or 0; ``confidence``: 1-5; ``seconds``: from the trial's display to
the answer (``time.perf_counter``); ``psnr``: the PSNR the cell's altered image reached (also
on a single-mode trial that showed the original: it is the cell's level).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..files import atomic_write
from .trials import Trial

COLUMNS = ("trial", "case", "source", "target_psnr", "psnr", "shown_left", "answer", "correct", "confidence",
           "seconds")
CONFIDENCE = (1, 2, 3, 4, 5)


class ReaderLog:
    """The answers so far, and the CSV at ``path`` that holds them (written at creation with
    the header only, then after every :meth:`record`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []
        self._write()

    def record(self, trial: Trial, *, psnr: float, answer: str, confidence: int, seconds: float) -> dict:
        """Score ``answer`` for ``trial``, append the row and rewrite the file; returns the row."""
        if int(confidence) not in CONFIDENCE or int(confidence) != confidence:
            raise ValueError(f"confidence must be one of 1-5, got {confidence!r}")
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"seconds must be a finite time >= 0, got {seconds!r}")
        row = {"trial": trial.trial, "case": trial.case, "source": trial.source,
               "target_psnr": trial.target_psnr, "psnr": round(float(psnr), 4), "shown_left": trial.shown_left,
               "answer": answer, "correct": int(trial.is_correct(answer)), "confidence": int(confidence),
               "seconds": round(float(seconds), 4)}
        self.rows.append(row)
        self._write()
        return row

    def text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        return buf.getvalue()

    def _write(self) -> None:
        text = self.text()
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
