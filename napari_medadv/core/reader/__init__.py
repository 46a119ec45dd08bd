"""Blinded reader studies: can a reader see an attack (or an MR artifact) at a given PSNR?

* :mod:`.trials` — the balanced, seeded trial plan and the altered images (matched PSNR);
* :mod:`.log` — ``reader_study.csv``, rewritten atomically after every answer;
* :mod:`.report` — accuracy per source × PSNR with Wilson intervals, the 75 % detection PSNR,
  table, summary CSV and figure (``medadv reader-report``).

Qt-free: the "Reader study" dock (:mod:`napari_medadv._qt.reader`) drives these.
"""

from .log import COLUMNS, ReaderLog
from .trials import ANSWERS, MODES, Stimulus, Trial, iter_stimuli, plan_trials

__all__ = ["ANSWERS", "COLUMNS", "MODES", "ReaderLog", "Stimulus", "Trial", "iter_stimuli", "plan_trials"]
