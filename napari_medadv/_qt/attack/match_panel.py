"""The Attack dock's "Matched quality" box: the severity of an MR artifact whose PSNR (or SSIM)
equals the current attack's on the same image is searched in a worker
(:func:`napari_medadv._qt.matched.match_job`), then shown beside the attack, in the readouts and,
on request, side by side in napari's grid view (:class:`napari_medadv._qt.matched.SideBySide`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from napari.utils import notifications
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton

from napari_medadv.core.errors import MedadvError

from ..layers import iter_show_outcome
from ..matched import MAX_EVALS, METRIC_LABELS, METRIC_UNITS, Matched, SideBySide, artifact_choices, match_job
from ..session import Session, Shown
from ..workers import Job
from .jobs import JobBar, headline

if TYPE_CHECKING:
    import napari


class MatchPanel(QGroupBox):
    """Matched quality: an MR artifact at the current attack's PSNR/SSIM, side by side.

    The search runs as the dock's job on ``jobs`` (its progress bar, status line, Run and Cancel);
    ``image()`` is the image picked in the dock (the attack must have been made on it),
    ``seed()`` the dock's seed (None: random) and ``on_oom()`` what a GPU out-of-memory error offers."""

    def __init__(self, viewer: napari.Viewer, session: Session, jobs: JobBar, *, image: Callable[[], str | None],
                 seed: Callable[[], int | None], on_oom: Callable[[], None]):
        super().__init__("Matched quality (MR artifact vs attack)")
        self.viewer = viewer
        self.session = session
        self._jobs = jobs
        self._image = image
        self._seed = seed
        self._on_oom = on_oom
        self._build()
        self._side = SideBySide(viewer)
        self.match_metric.currentIndexChanged.connect(self.update_controls)
        self.match_btn.clicked.connect(lambda: self.match())
        self.side_btn.toggled.connect(self.side_by_side)

    def _build(self) -> None:
        self.match_artifact = QComboBox()
        for label, name in artifact_choices():
            self.match_artifact.addItem(label, name)
        # bias field by default: it reaches most attack PSNRs in a few evaluations (motion is
        # step-wise in k-space lines and ghosting has a PSNR floor around 33 dB)
        self.match_artifact.setCurrentIndex(max(0, self.match_artifact.findData("biasfield")))
        self.match_artifact.setToolTip("The MR artifact (torchio) whose severity is searched")
        self.match_metric = QComboBox()
        for m in ("psnr", "ssim"):
            self.match_metric.addItem(METRIC_LABELS[m], m)
        self.match_metric.setToolTip("Image quality to match (over the contrasts, each on its own range)")
        self.match_btn = QPushButton("Match PSNR of current attack")
        self.match_btn.setToolTip("Find the artifact severity whose image quality equals the current attack's "
                                  "on the same image, then show the artifact's layers beside the attack's")
        self.side_btn = QPushButton("Side by side")
        self.side_btn.setCheckable(True)
        self.side_btn.setToolTip("Grid view: the attack and the matched artifact, each with its segmentation "
                                 "and a caption (PSNR, Dice); press again to restore the layers")
        self.match_info = QLabel("run an attack first; then match an artifact to its image quality")
        self.match_info.setWordWrap(True)
        fm = QFormLayout(self)
        mrow = QHBoxLayout()
        mrow.addWidget(self.match_artifact, 1)
        mrow.addWidget(self.match_metric)
        fm.addRow("artifact", mrow)
        brow = QHBoxLayout()
        brow.addWidget(self.match_btn, 1)
        brow.addWidget(self.side_btn)
        fm.addRow(brow)
        fm.addRow(self.match_info)

    @property
    def side_active(self) -> bool:
        """The side-by-side grid view is on."""
        return self._side.active

    def current_attack(self) -> Shown | None:
        """The latest attack result, if it was made on the image selected in the dock."""
        shown = self.session.last_attack
        if shown is None or self._image() not in shown.source.channel_layers:
            return None
        return shown

    def set_busy(self) -> None:
        """Another job (an attack) started: no match until it has finished."""
        self.match_btn.setEnabled(False)

    def update_controls(self, *_) -> None:
        metric = METRIC_LABELS[self.match_metric.currentData()]
        self.match_btn.setText(f"Match {metric} of current attack")
        attack = self.current_attack()
        busy = self._jobs.busy
        self.match_btn.setEnabled(attack is not None and not busy)
        self.side_btn.setEnabled(self.session.matched is not None or self.side_btn.isChecked())
        if self.session.matched is None and not busy:
            if attack is None:
                self.match_info.setText("run an attack on this image first; then match an artifact to its "
                                        "image quality")
            else:
                iq = (attack.outcome.metrics or {}).get("image_quality") or {}
                psnr = f" (PSNR {iq['psnr']:.2f} dB)" if "psnr" in iq else ""
                self.match_info.setText(f"current attack: {attack.outcome.attack} on {attack.source.case}{psnr}")

    def _choose(self, artifact: str | None, metric: str | None) -> tuple[str, str]:
        """Select ``artifact`` and ``metric`` in the combos (None: keep the dock's choice); both names."""
        if artifact is not None:
            idx = self.match_artifact.findData(artifact)
            if idx < 0:
                raise ValueError(f"{artifact!r} is not an MR artifact; choose one of "
                                 f"{', '.join(n for _, n in artifact_choices())}")
            self.match_artifact.setCurrentIndex(idx)
        if metric is not None:
            idx = self.match_metric.findData(metric)
            if idx < 0:
                raise ValueError(f"metric must be 'psnr' or 'ssim', got {metric!r}")
            self.match_metric.setCurrentIndex(idx)
        return self.match_artifact.currentData(), self.match_metric.currentData()

    def match(self, artifact: str | None = None, metric: str | None = None) -> Job | None:
        """Search the severity of ``artifact`` (default: the dock's choice) whose ``metric``
        (``"psnr"``/``"ssim"``) equals the current attack's, in a worker with progress and
        Cancel; then show the artifact's layers beside the attack's and both in the readouts."""
        artifact, metric = self._choose(artifact, metric)
        jobs = self._jobs
        if jobs.busy:
            notifications.show_error("a job is already running: wait or press Cancel")
            return None
        attack = self.current_attack()
        if attack is None:
            notifications.show_error("run an attack on this image first (Run), then match an artifact to it")
            return None
        src, outcome = attack.source, attack.outcome
        model = outcome.model  # the attack's model: its Dice is what the artifact is compared with
        seed = self._seed()
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
        label, unit = METRIC_LABELS[metric], METRIC_UNITS[metric]
        art_label = self.match_artifact.currentText()
        was_side_by_side = self._side.active
        self.side_by_side(False)  # the new layers go onto the layers as the user left them
        total = MAX_EVALS + 1
        jobs.begin(total, f"matching {label}: {art_label} vs {outcome.attack} on {src.case} …")
        self.match_info.setText(f"searching the {art_label} severity …")
        self.match_btn.setEnabled(False)
        t0 = time.perf_counter()

        def on_step(record):
            if record is None:
                return
            if "n" in record:
                jobs.progress.setValue(int(record["n"]))
                jobs.say(f"matching {label} {record['target']:.4g}{unit}: evaluation {record['n']}, "
                         f"severity {record['value']:.4f} → {record['quality']:.4g}{unit}")
            elif "running" in record:
                jobs.progress.setValue(total - 1)
                jobs.say(f"{art_label} at severity {record['running']:.4f}: segmenting …")

        def on_done(res):
            m, art_outcome = res
            shown = Shown(src, art_outcome, live=False, roi=attack.roi)

            def then():
                jobs.progress.setValue(total)
                changed = self.session.last_attack is not attack
                self.session.set_shown(shown)
                if changed:  # live ε moved on during the search: the match no longer holds
                    notifications.show_warning(f"the attack changed during the match: press 'Match {label} of "
                                               "current attack' again")
                    jobs.say(f"{art_label} shown; the attack changed meanwhile (not matched)")
                    return
                self.session.set_matched(Matched(attack, shown, m))
                jobs.say(f"matched in {time.perf_counter() - t0:.1f} s — {headline(art_outcome)}")
                if was_side_by_side:
                    self.side_by_side(True)
                if not m.reached:
                    notifications.show_warning(f"{art_label} did not reach {label} {m.target:.4g}{unit}: closest "
                                               f"{m.achieved:.4g}{unit} at severity {m.value:.3f} ({m.note})")

            jobs.apply_gradually(iter_show_outcome(self.viewer, src, art_outcome), then)

        def on_cancel():
            jobs.say("match cancelled — layers unchanged")
            previous = self.session.matched  # an earlier match still holds
            self.match_info.setText(previous.summary() if previous is not None else "match cancelled")
            if was_side_by_side and previous is not None:
                self.side_by_side(True)

        def on_finish():
            jobs.end()
            self.update_controls()

        jobs.job = Job(match_job, src, model, artifact, metric, outcome.adversarial, outcome.labels, attack.roi,
                       seed, desc=f"matching {label}: {art_label} on {src.case}", total=total, hooks=True,
                       on_yield=on_step, on_done=on_done, on_cancel=on_cancel, on_finish=on_finish,
                       on_oom=self._on_oom, activity=False).start()  # the dock's bar shows it
        return jobs.job

    def matched_changed(self, matched) -> None:
        if matched is None:
            if self._side.active:
                self.side_btn.setChecked(False)  # restores the layers
        else:
            self.match_info.setText(matched.summary())
        self.update_controls()

    def side_by_side(self, on: bool = True) -> None:
        """Grid view of the attack and the matched artifact (on), or the layers as before (off)."""
        if not on:
            self._side.disable()
        else:
            matched = self.session.matched
            try:
                if matched is None:
                    raise ValueError("match an artifact first ('Match PSNR of current attack')")
                self._side.show(matched)
            except (MedadvError, ValueError) as e:  # a notification; the view stays as it was
                self._side.disable()
                notifications.show_error(f"side by side: {e}")
                on = False
        if self.side_btn.isChecked() != on:
            self.side_btn.blockSignals(True)
            self.side_btn.setChecked(on)
            self.side_btn.blockSignals(False)
        self.update_controls()
