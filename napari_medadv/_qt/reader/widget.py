"""Reader study dock: a blinded test of whether readers can see an attack or an MR artifact at a
given PSNR.

Set-up (:class:`~.panels.SetupPanel`): cases (the open image layers or the shipped samples),
sources, target PSNRs, trials per cell, mode, seed and the output CSV. Start plans the trials
(:func:`napari_medadv.core.reader.plan_trials`) and makes each cell's altered image with the
matched-PSNR search in a worker (:func:`napari_medadv.core.reader.iter_stimuli`, the model of
the Model dock, progress and Cancel). Then the trials run blinded (:class:`~.blind.BlindView`),
driven by keys: ← / → (pair) or A / O (single), confidence 1-5, Space / Enter for the next
trial, Esc to stop. Each answer is appended to ``reader_study.csv`` at once (atomic rewrite);
the time of a trial runs from its display to the answer key (``time.perf_counter``). At the end
or on Esc the viewer is restored as it was.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_medadv.core.reader import ReaderLog, Trial, iter_stimuli, plan_trials
from napari_medadv.core.reader.trials import ALTERED, check_design

from ..docking import tab_on_first_show
from ..session import Session
from ..workers import Job, report_error
from .blind import BlindView
from .cases import CaseChoice, StudyCase, layer_cases, sample_cases
from .panels import SetupPanel, TrialPanel

if TYPE_CHECKING:
    import napari

#: viewer key -> the trial panel's key name (so the keys work while the canvas has the focus)
VIEWER_KEYS = {"Left": "left", "Right": "right", "a": "a", "o": "o", "1": "1", "2": "2", "3": "3", "4": "4",
               "5": "5", "Space": "next", "Enter": "next", "Escape": "abort"}


def stimuli_job(choices: list[CaseChoice], model, sources: list[str], psnrs: list[float], seed: int, *,
                should_stop, report):
    """Generator for a :class:`~..workers.Job` (``hooks=True``): load the cases, then the
    altered image of every cell; returns ``(cases by name, stimuli by cell)`` or ``None``."""
    cases: dict[str, StudyCase] = {}
    for k, c in enumerate(choices):
        yield 0, 1, {"loading": c.label}
        case = c.load()
        cases[case.name] = case
    images = {name: c.image for name, c in cases.items()}
    stimuli = yield from iter_stimuli(images, model, sources, psnrs, seed=seed, should_stop=should_stop,
                                      report=report)
    return None if stimuli is None else (cases, stimuli)


class ReaderStudyWidget(QWidget):
    """The Reader study dock (see the module docstring)."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        tab_on_first_show(self, napari_viewer)
        self.viewer = napari_viewer
        self.session = Session.of(napari_viewer)
        self.setup = SetupPanel()
        self.panel = TrialPanel()
        self.panel.hide()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.setup)
        lay.addWidget(self.panel)
        self.blind = BlindView(napari_viewer, keep=self)
        self.job: Job | None = None
        self.plan: list[Trial] = []
        self.cases: dict[str, StudyCase] = {}
        self.stimuli: dict = {}
        self.log: ReaderLog | None = None
        self.index = -1
        self._answer: str | None = None
        self._confidence: int | None = None
        self._seconds: float | None = None
        self._shown_at = 0.0
        self._saved_keys: dict = {}
        self._design: dict = {}
        self.refresh_cases()
        self._add_callbacks()

    def _add_callbacks(self) -> None:
        self.setup.refresh_btn.clicked.connect(self.refresh_cases)
        self.setup.start_btn.clicked.connect(self.start)
        self.setup.cancel_btn.clicked.connect(self.cancel)
        self.panel.key.connect(self.handle_key)
        self.panel.stop_btn.clicked.connect(self.abort)

    def closeEvent(self, event) -> None:
        self.cancel()
        self.abort()
        super().closeEvent(event)

    # ------------------------------------------------------------------ set-up

    def refresh_cases(self) -> None:
        """The open image layers' cases (ticked) and the shipped samples (unticked)."""
        open_cases = layer_cases(self.viewer)
        checked = {c.label for c in open_cases}
        self.setup.set_cases([*open_cases, *sample_cases()], checked)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    @property
    def in_trial(self) -> bool:
        return self.blind.active

    @property
    def trial(self) -> Trial | None:
        return self.plan[self.index] if self.in_trial and 0 <= self.index < len(self.plan) else None

    def start(self) -> Job | None:
        """Check the set-up, plan the trials and make the images in a worker; the trials begin
        when it is done. Problems go to the status line (and a notification)."""
        if self.running or self.in_trial:
            return None
        s = self.setup
        try:
            choices, sources, psnrs, design = s.checked_cases(), s.checked_sources(), s.target_psnrs(), s.design()
            check_design([c.label for c in choices], sources, psnrs, design["repeats"], design["mode"])
            model = self.session.model
            if model is None:
                raise ValueError("load a model in the Model dock first (the attacks target it)")
            out = s.out.text().strip()
            if not out:
                raise ValueError("give the output CSV")
        except ValueError as exc:
            s.status.setText(f"cannot start: {exc}")
            report_error(exc, "Reader study")
            return None
        self._design = {**design, "sources": sources, "psnrs": psnrs, "out": out}
        n_cells = len(choices) * len(sources) * len(psnrs)
        s.progress.setRange(0, n_cells)
        s.progress.setValue(0)
        s.status.setText(f"making {n_cells} altered images at matched PSNR…")
        s.busy(True)
        self.job = Job(stimuli_job, choices, model, sources, psnrs, design["seed"], desc="Reader study images",
                       hooks=True, total=n_cells, activity=False, on_yield=self._progress, on_done=self._made,
                       on_finish=self._job_finished,
                       on_cancel=lambda: s.status.setText("cancelled; no trial was shown")).start()
        return self.job

    def _progress(self, payload) -> None:
        if not isinstance(payload, dict):
            if payload is not None:  # a finished cell (Stimulus)
                self.setup.progress.setValue(self.setup.progress.value() + 1)
            return
        if "loading" in payload:
            self.setup.status.setText(f"loading {payload['loading']}…")
        else:
            self.setup.status.setText(f"matching {payload['source']} on {payload['case']}: "
                                      f"evaluation {payload['evaluation']}, PSNR {payload['psnr']:.2f} dB")

    def _job_finished(self) -> None:
        self.setup.busy(False)
        if not self.in_trial and self.setup.status.text().startswith(("making", "matching", "loading")):
            self.setup.status.setText("the images could not be made (see the notification); no trial was shown")

    def cancel(self) -> None:
        if self.running:
            self.job.cancel()

    def _made(self, result) -> None:
        if result is None:
            return
        cases, stimuli = result
        d = self._design
        try:
            log = ReaderLog(d["out"])
        except OSError as exc:
            self.setup.status.setText(f"cannot write {d['out']}: {exc}")
            report_error(ValueError(f"{d['out']}: {exc}"), "Reader study")
            return
        missed = [s for s in stimuli.values() if not s.reached]
        self.begin(cases, stimuli, plan_trials(list(cases), d["sources"], d["psnrs"], repeats=d["repeats"],
                                               mode=d["mode"], seed=d["seed"]), log)
        if missed:
            self.setup.status.setText(f"{len(missed)} cell(s) did not reach their target PSNR; the CSV records "
                                      "the PSNR reached")

    # ------------------------------------------------------------------ trials

    def begin(self, cases: dict[str, StudyCase], stimuli: dict, plan: list[Trial], log: ReaderLog) -> None:
        """Blind the viewer and show the first trial of ``plan``; answers go to ``log``."""
        self.cases, self.stimuli, self.plan, self.index, self.log = cases, stimuli, plan, -1, log
        self.setup.hide()
        self.panel.show()
        self.blind.enter()
        self._bind_keys()
        self._next(first=True)

    def _images(self, trial: Trial) -> list[np.ndarray]:
        case = self.cases[trial.case]
        altered = case.display(self.stimuli[trial.cell].image)
        original = case.display(case.image.array)
        if trial.mode == "pair":
            return [altered, original] if trial.shown_left == ALTERED else [original, altered]
        return [altered if trial.shown_left == ALTERED else original]

    def _next(self, first: bool = False) -> None:
        self.index += 1
        if self.index >= len(self.plan):
            self.finish()
            return
        trial = self.plan[self.index]
        self._answer = self._confidence = self._seconds = None
        self.blind.show(self._images(trial), self.cases[trial.case].layer_kwargs(), reset_view=first)
        self.panel.show_trial(self.index + 1, len(self.plan), trial.mode)
        self.panel.setFocus()
        self._shown_at = time.perf_counter()

    def answer(self, answer: str) -> None:
        """The reader's answer to the trial on screen (``left``/``right`` or ``altered``/``original``);
        the trial's time stops here (a changed answer restarts nothing: the last one counts)."""
        trial = self.trial
        if trial is None:
            return
        trial.is_correct(answer)  # ValueError for an answer of the other mode
        self._answer = answer
        self._seconds = time.perf_counter() - self._shown_at
        self.panel.show_choice(self._answer, self._confidence)

    def set_confidence(self, level: int) -> None:
        if self.trial is None:
            return
        self._confidence = int(level)
        self.panel.show_choice(self._answer, self._confidence)

    def next_trial(self) -> bool:
        """Record the answer and show the next trial; False (nothing recorded) when the answer
        or the confidence is missing."""
        trial = self.trial
        if trial is None:
            return False
        if self._answer is None or self._confidence is None:
            self.panel.choice.setText("choose an answer and a confidence (1-5) first")
            return False
        stim = self.stimuli[trial.cell]
        self.log.record(trial, psnr=stim.psnr, answer=self._answer, confidence=self._confidence,
                        seconds=self._seconds)
        self._next()
        return True

    def handle_key(self, key: str) -> None:
        trial = self.trial
        if trial is None:
            return
        if key == "abort":
            self.abort()
        elif key == "next":
            self.next_trial()
        elif key in ("left", "right") and trial.mode == "pair":
            self.answer(key)
        elif key in ("a", "o") and trial.mode == "single":
            self.answer("altered" if key == "a" else "original")
        elif key in "12345":
            self.set_confidence(int(key))

    def finish(self) -> None:
        n = len(self.log.rows) if self.log is not None else 0
        self._end(f"done: {n} trials written to {self.log.path if self.log else '?'} — report: "
                  f"medadv reader-report {self.log.path if self.log else ''}")

    def abort(self) -> None:
        """Stop the trials (Esc): the viewer is restored; the answers so far are in the CSV."""
        if not self.in_trial:
            return
        n = len(self.log.rows) if self.log is not None else 0
        self._end(f"stopped after {n} of {len(self.plan)} trials; the answers so far are in "
                  f"{self.log.path if self.log else '?'}")

    def _end(self, text: str) -> None:
        self._unbind_keys()
        self.blind.exit()
        self.index = -1
        self.panel.hide()
        self.setup.show()
        self.setup.status.setText(text)

    # ------------------------------------------------------------------ viewer keys

    def _bind_keys(self) -> None:
        self._saved_keys = {}
        for key, name in VIEWER_KEYS.items():
            try:
                prev = self.viewer.bind_key(key, lambda _v, name=name: self.handle_key(name), overwrite=True)
            except (TypeError, ValueError, KeyError):
                continue
            self._saved_keys[key] = prev

    def _unbind_keys(self) -> None:
        for key, prev in self._saved_keys.items():
            self.viewer.bind_key(key, prev, overwrite=True)
        self._saved_keys = {}
