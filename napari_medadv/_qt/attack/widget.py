"""Attack dock: method (from the engine's registry), ε in % of range with native units, the
method's own parameters (built generically from ``AttackSpec.params``), target, ROI, seed,
Run/Cancel, live ε (FGSM's cached gradient sign), Save attack, and "Matched quality": an MR
artifact at the PSNR/SSIM of the current attack, with a side-by-side view (:mod:`..matched`).

:class:`AttackWidget` composes the panels of this package and wires them together in
:meth:`AttackWidget._add_callbacks`; the panels never reach into each other."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from napari.utils import notifications
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget

from napari_medadv.core.attacks import ATTACKS

from ..docking import scrolling, tab_on_first_show
from ..results import iter_show_outcome
from ..session import Session, Shown
from ..workers import Job, report_error
from .anytime import AnytimeDisplay
from .inputs import InputsPanel
from .jobs import JobBar, attack_job, expected_steps, headline
from .live import LIVE_DEBOUNCE_MS, LivePreview
from .live_iter import LiveIterative
from .live_search import LiveSearch
from .match_panel import MatchPanel
from .params import MethodPanel

if TYPE_CHECKING:
    import napari


class AttackWidget(QWidget):
    """The Attack dock (with live ε).

    Panels, top to bottom: :class:`.inputs.InputsPanel` ("Input"), :class:`.params.MethodPanel`
    ("Attack", "Parameters"), the inputs' "Target, region, seed" box, :class:`.jobs.JobBar`
    (Run / Cancel / Save, progress, status) and :class:`.match_panel.MatchPanel`;
    :class:`.live.LivePreview` runs live ε behind the method panel's check box."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        tab_on_first_show(self, napari_viewer)
        self.viewer = napari_viewer
        self.session = Session.of(napari_viewer)
        self.registry = ATTACKS

        self.method_panel = MethodPanel(napari_viewer, self.registry, source_layer=self.source_layer,
                                        on_method_changed=self._method_changed, on_eps_changed=self._eps_changed,
                                        on_param_changed=self._param_changed)
        self.inputs = InputsPanel(napari_viewer, self.session, self.method_panel.spec(),
                                  on_source_changed=self._source_changed, on_inputs_changed=self._inputs_changed)
        self.jobs = JobBar()
        self.match_panel = MatchPanel(napari_viewer, self.session, self.jobs, image=self.inputs.image_name,
                                      seed=self.inputs.seed_value, on_oom=self.use_cpu)
        self.live_eps = LivePreview(napari_viewer, self.session, self.method_panel.live, self, eps=self.eps,
                                    key=self.inputs.layer_key, context=self.inputs.context, say=self.jobs.say,
                                    before_show=self._end_side_by_side,
                                    applies=lambda: self.method_panel.spec().live_eps)
        self.live_iter = LiveIterative(napari_viewer, self.session, self.method_panel.live, self.jobs,
                                       attack=self.attack_name, params=self.params, seed=self.inputs.seed_value,
                                       key=self.inputs.layer_key, context=self.inputs.context, say=self.jobs.say)
        self.live_search = LiveSearch(napari_viewer, self.session, self.method_panel.live, self.jobs,
                                      attack=self.attack_name, params=self.params, seed=self.inputs.seed_value,
                                      key=self.inputs.layer_key, context=self.inputs.context, say=self.jobs.say)
        self._search_debounce = QTimer(self)
        self._search_debounce.setSingleShot(True)
        self._search_debounce.setInterval(LIVE_DEBOUNCE_MS)
        self._iter_debounce = QTimer(self)
        self._iter_debounce.setSingleShot(True)
        self._iter_debounce.setInterval(LIVE_DEBOUNCE_MS)
        self._expose_controls()

        # the form (about 800 px tall) scrolls inside the dock: opened from the Plugins menu on a
        # laptop screen it neither pushes the window past the screen nor squeezes the canvas
        self.form = QWidget()
        lay = QVBoxLayout(self.form)
        for w in (self.inputs.input_box, self.method_panel.attack_box, self.method_panel.params_box,
                  self.inputs.options_box):
            lay.addWidget(w)
        lay.addLayout(self.jobs.buttons)
        lay.addWidget(self.jobs.progress)
        lay.addWidget(self.jobs.status)
        lay.addWidget(self.match_panel)
        lay.addStretch(1)
        self.scroll = scrolling(self, self.form)
        self._sized = False

        self._add_callbacks()
        self.inputs.refresh()
        self.method_panel.refresh()
        self.set_eps(0.05)
        self.match_panel.update_controls()

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if not self._sized:  # once polished (the style sets fonts and margins): the form's real size
            self._sized = True
            self.fit_form()

    def fit_form(self, max_height: int | None = None) -> None:
        """As wide as the form needs (never clipped sideways) and, up to 55 % of the screen's
        height (or ``max_height``, kept for later calls), as tall: beyond that the form scrolls."""
        if max_height is not None:
            self._max_form_height = int(max_height)
        bar = self.scroll.verticalScrollBar().sizeHint().width()
        self.scroll.setMinimumWidth(self.form.minimumSizeHint().width() + bar + 4)
        screen = self.screen() if hasattr(self, "screen") else None
        avail = screen.availableGeometry().height() if screen is not None else 1080
        cap = min(int(0.55 * avail), getattr(self, "_max_form_height", avail))
        self.scroll.setMinimumHeight(min(self.form.sizeHint().height() + 20, cap))

    def _expose_controls(self) -> None:
        """The panels' controls under the dock's names (scripts, the demo and the tests use them)."""
        inputs, method, jobs, match = self.inputs, self.method_panel, self.jobs, self.match_panel
        self.image_combo, self.labels_combo = inputs.image_combo, inputs.labels_combo
        self.target_combo, self.roi_combo, self.seed, self.track = (inputs.target_combo, inputs.roi_combo,
                                                                     inputs.seed, inputs.track)
        self.method, self.eps_slider, self.eps_spin = method.method, method.eps_slider, method.eps_spin
        self.top_percent, self.vulnerability = inputs.top_percent, inputs.vulnerability
        self.eps_native, self.live, self.params_box = method.eps_native, method.live, method.params_box
        self.run_btn, self.cancel_btn, self.save_btn = jobs.run_btn, jobs.cancel_btn, jobs.save_btn
        self.progress, self.status = jobs.progress, jobs.status
        self.match_artifact, self.match_metric, self.match_info = (match.match_artifact, match.match_metric,
                                                                   match.match_info)
        self.match_btn, self.side_btn = match.match_btn, match.side_btn
        # live ε's workers and debounce timer (the tests and benchmarks count and time them)
        self._live_images, self._debounce = self.live_eps.images, self.live_eps.debounce

    # ------------------------------------------------------------------ wiring
    def _add_callbacks(self) -> None:
        """Everything that crosses a panel: the viewer's layers, the session, the buttons."""
        for sig in self._layer_events():
            sig.connect(self.inputs.refresh)
        self.run_btn.clicked.connect(lambda: self.run())
        self.cancel_btn.clicked.connect(self.cancel)
        self.save_btn.clicked.connect(lambda: self.save_attack())
        self.session.model_changed.connect(self._model_changed)
        self.session.result_changed.connect(self._result_changed)
        self.session.result_changed.connect(self.match_panel.update_controls)
        self.session.matched_changed.connect(self.match_panel.matched_changed)
        self.image_combo.currentIndexChanged.connect(self.match_panel.update_controls)
        self._iter_debounce.timeout.connect(self.live_iter.submit)
        self._search_debounce.timeout.connect(self.live_search.submit)
        self.live.toggled.connect(self._live_toggled)
        self.inputs.top_percent.valueChanged.connect(self._sync_live)

    def _layer_events(self) -> tuple:
        events = self.viewer.layers.events
        return events.inserted, events.removed, events.moved

    def closeEvent(self, event) -> None:
        self.cancel()
        self.side_by_side(False)
        self.session.result_changed.disconnect(self.match_panel.update_controls)
        self.session.result_changed.disconnect(self._result_changed)
        self.session.matched_changed.disconnect(self.match_panel.matched_changed)
        self.live_eps.shutdown()
        self.live_iter.shutdown()
        self.live_search.shutdown()
        for sig in self._layer_events():
            sig.disconnect(self.inputs.refresh)
        self.session.model_changed.disconnect(self._model_changed)
        super().closeEvent(event)

    def _result_changed(self, shown) -> None:
        self.save_btn.setEnabled(shown is not None)

    def _source_changed(self) -> None:
        self._inputs_changed()
        self.method_panel.source_changed()

    def _inputs_changed(self, *_) -> None:
        self.live_eps.invalidate()
        self.live_iter.invalidate()
        self.live_search.invalidate()

    def _method_changed(self, spec) -> None:
        self.live_iter.cancel()
        self.live_search.cancel()
        self.inputs.set_method(spec)
        self._sync_live()

    def _sync_live(self, *_) -> None:
        """Live only for methods that have it (ε, or DGDE's kept search), and not with a top-k %
        region (which Run computes: a live update would perturb the whole region)."""
        spec = self.method_panel.spec()
        on = (spec.live_eps or spec.warm_start or bool(spec.live_search)) and not self.inputs.top_percent.value() > 0
        if not on and self.live.isChecked():
            self.live.setChecked(False)
        self.live.setEnabled(bool(on))

    def _param_changed(self, name: str) -> None:
        """DGDE's query budget / maximum pixels moved: continue the kept search (live on)."""
        if self.live.isChecked() and name in self.method_panel.spec().live_search:
            self._search_debounce.start()

    def _eps_changed(self) -> None:
        if self.method_panel.spec().warm_start:
            if self.live.isChecked():
                self._iter_debounce.start()
        else:
            self.live_eps.eps_changed()

    def _live_toggled(self, on: bool) -> None:
        spec = self.method_panel.spec()
        if on and spec.warm_start:
            self._iter_debounce.start()
        elif on and spec.live_search:
            self._search_debounce.start()
        elif not on:
            self.live_iter.cancel()
            self.live_search.cancel()

    def _model_changed(self, model) -> None:
        self.live_eps.invalidate()
        self.inputs.refresh_targets()

    def _end_side_by_side(self) -> None:
        if self.match_panel.side_active:
            self.side_by_side(False)  # a new ε ends the match: restore the layers first

    # ------------------------------------------------------------------ the dock's choices
    def source_layer(self):
        """The image layer picked in the dock, or None."""
        return self.inputs.source_layer()

    def attack_name(self) -> str:
        return self.method_panel.attack_name()

    def set_attack(self, name: str, **params) -> None:
        """Select an attack and set its parameters (for scripts, the demo and tests)."""
        self.method_panel.set_attack(name, **params)

    def params(self) -> dict:
        return self.method_panel.params()

    def eps(self) -> float:
        return self.method_panel.eps()

    def set_eps(self, eps: float) -> None:
        self.method_panel.set_eps(eps)

    @property
    def last_live_latency(self) -> float | None:
        """Seconds from the latest live-ε slider move to its images on screen (benchmarks read it)."""
        return self.live_eps.last_latency

    @last_live_latency.setter
    def last_live_latency(self, value: float | None) -> None:
        self.live_eps.last_latency = value

    # ------------------------------------------------------------------ run / cancel
    def run(self) -> Job | None:
        """Start the selected attack in a worker. The result lands on the layers of the image it
        was started on, even if the selection changes meanwhile."""
        model = self.session.model
        if model is None:
            notifications.show_error("load a model first (Model dock)")
            return None
        if self.jobs.busy:
            notifications.show_error("an attack is already running: wait or press Cancel")
            return None
        try:
            src, labels, roi, target = self.inputs.context()
            name = self.attack_name()
            spec = self.registry.get_spec(name)
            params = self.params()
            if self.inputs.track_metrics():
                params["track_metrics"] = True
            model.check_image(src.image.array, src.case, src.image.channel_names)
            vulnerability = self.inputs.vulnerability_options()
        except Exception as e:
            report_error(e, "attack")
            return None
        seed = self.inputs.seed_value()
        model_b = self.session.transfer_model
        self.side_by_side(False)  # a new attack result ends the match: restore the layers first
        total = expected_steps(spec, params)
        self.jobs.begin(total, f"running {spec.label} on {src.case} …")
        self.match_panel.set_busy()
        self.session.run_started.emit(name)
        history: list[dict] = []
        t0 = time.perf_counter()
        shows_steps = spec.iterative or (spec.gradient_free and spec.kind == "adversarial")  # DGDE: generations
        display = self.anytime = (AnytimeDisplay(self.viewer, self.session, self.jobs, src, roi)
                                  if shows_steps else None)

        def on_step(payload):
            record, frame = payload
            if display is not None:
                display.show(frame)
            history.append(record)
            self.progress.setMaximum(max(self.progress.maximum(), int(record["step"])))
            self.progress.setValue(int(record["step"]))
            self.session.step.emit(name, record)

        def on_done(res):
            outcome, transfer = res
            if display is not None:
                display.finish()

            def shown():
                self.session.set_shown(Shown(src, outcome, live=False, transfer=transfer, history=history,
                                             roi=roi))
                self.jobs.say(f"{spec.label} on {src.case}: done in {time.perf_counter() - t0:.1f} s — "
                              f"{headline(outcome)}")

            self.jobs.apply_gradually(iter_show_outcome(self.viewer, src, outcome), shown)

        def on_cancel():
            if display is not None:
                display.cancel()
            self.jobs.say(f"{spec.label} cancelled — layers unchanged")

        def on_finish():
            if display is not None and not display.stopped:
                display.cancel()  # failed: no result replaces the frames
            self.jobs.end()
            self.match_panel.update_controls()
            if not self.jobs.job.cancelled and self.status.text().startswith("running"):
                self.jobs.say(f"{spec.label} failed (see the notification)")

        self.jobs.job = Job(attack_job, src, model, name, params, labels, target, roi, seed, model_b,
                            display.pacer if display is not None else None, desc=f"{spec.label} on {src.case}", total=total, on_yield=on_step, on_done=on_done,
                            on_cancel=on_cancel, on_finish=on_finish, on_oom=self.use_cpu,
                            activity=False, vulnerability=vulnerability).start()  # the dock's own bar shows it
        return self.jobs.job

    def use_cpu(self) -> None:
        """Move the model(s) to the CPU (offered after a GPU out-of-memory error); the Model dock
        follows the session's device_changed signal."""
        self.session.move_models("cpu", then=lambda: notifications.show_info(
            "the model now runs on the CPU: press Run again"))

    def cancel(self) -> None:
        self.jobs.cancel()
        self.live_eps.cancel()
        self.live_iter.cancel()
        self.live_search.cancel()

    @property
    def running(self) -> bool:
        """A run, a live-ε update or a result landing (not the live ε cache filling in the background)."""
        return (self.jobs.applying or self.jobs.busy or self.live_eps.busy or self.live_search.busy
                or (self.live_iter.busy and not self.live_iter.filling))

    # ------------------------------------------------------------------ matched quality, export
    def current_attack(self) -> Shown | None:
        """The latest attack result, if it was made on the image selected in the dock."""
        return self.match_panel.current_attack()

    def match(self, artifact: str | None = None, metric: str | None = None) -> Job | None:
        """Search the severity of ``artifact`` (default: the dock's choice) whose ``metric``
        (``"psnr"``/``"ssim"``) equals the current attack's, in a worker with progress and
        Cancel; then show the artifact's layers beside the attack's and both in the readouts."""
        return self.match_panel.match(artifact, metric)

    def side_by_side(self, on: bool = True) -> None:
        """Grid view of the attack and the matched artifact (on), or the layers as before (off)."""
        self.match_panel.side_by_side(on)

    def save_attack(self, folder: str | None = None) -> Job | None:
        """Write the result folder of the shown result (same as `medadv attack`) + screenshot.png."""
        shown = self.session.shown
        if shown is None:
            notifications.show_error("nothing to save yet: run an attack first")
            return None
        if folder is None:
            folder = QFileDialog.getSaveFileName(self, "Save attack to a new folder",
                                                 f"{shown.source.case}-{shown.outcome.attack}")[0]
            if not folder:
                return None
        return self.jobs.start_save(self.viewer, shown, folder)
