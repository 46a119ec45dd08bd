"""Attack dock: method (from the engine's registry), ε in % of range with native units, the
method's own parameters (built generically from ``AttackSpec.params``), target, ROI, seed,
Run/Cancel, live ε (FGSM's cached gradient sign), Save attack, and "Matched quality": an MR
artifact at the PSNR/SSIM of the current attack, with a side-by-side view (:mod:`.matched`)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medadv.core.errors import MedadvError

from ..layers import (
    META,
    Source,
    context_from_choices,
    flush_deferred,
    iter_show_outcome,
    labels_for,
    show_outcome,
    source_from_layer,
)
from ..matched import MAX_EVALS, METRIC_LABELS, METRIC_UNITS, Matched, SideBySide, artifact_choices, match_job
from ..session import Choices, Session, Shown
from ..workers import Job, LatestWins, report_error
from .params import ParamField

if TYPE_CHECKING:
    import napari


EPS_STEPS_PER_PERCENT = 10  # slider resolution: 0.1 % of the intensity range
EPS_MAX_PERCENT = 50.0
LIVE_DEBOUNCE_MS = 10
_NONE = "none"


# ----------------------------------------------------------------------------- jobs (worker side)


def attack_job(source: Source, model, name: str, params: dict, labels, target, roi, seed, model_b):
    """Generator for a napari worker: ``(done, total, history record)`` per step; returns
    ``(outcome, transfer outcome or None)``."""
    from napari_medadv.core.pipeline import iter_attack, transfer_outcome

    gen = iter_attack(source.image, model, name, params=params, labels=labels, target=target, roi=roi,
                      seed=seed)
    try:
        step = next(gen)
        while True:
            record = {"step": step.step, "loss": step.loss, **step.metrics}
            yield step.step, step.n_steps, record
            step = gen.send(None)
    except StopIteration as done:
        outcome = done.value
    finally:
        gen.close()
    transfer = transfer_outcome(outcome, model_b) if model_b is not None else None
    return outcome, transfer


def prepare_live_job(source: Source, model, labels, roi):
    from napari_medadv.core.pipeline import LiveEps

    yield 0, 1, None
    return LiveEps(source.image, model, labels=labels, roi=roi)


def save_job(outcome, folder: str, extra: dict):
    from napari_medadv.core.pipeline import write_outcome

    yield 0, 1, None
    return write_outcome(outcome, folder, record_extra=extra, command=["napari", "napari-medadv", "Save attack"])


# ----------------------------------------------------------------------------- the dock


class AttackWidget(QWidget):
    """The Attack dock (with live ε)."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        from napari_medadv.core.attacks import ATTACKS

        self.viewer = napari_viewer
        self.session = Session.of(napari_viewer)
        self.registry = ATTACKS
        self._job: Job | None = None
        self._live = None  # (key, LiveEps)
        self._live_job: Job | None = None
        self._fields: dict[str, ParamField] = {}
        self._image_picked = False
        self._has_eps = True
        self._applying = 0
        self._labels_picked = False
        self._ranges: tuple[Any, np.ndarray] | None = None
        self.last_live_latency: float | None = None
        self._live_t0: dict[float, float] = {}

        inputs = self._build_inputs()
        attack_box = self._build_attack_box()
        opts = self._build_options()
        rrow = self._build_run_row()
        match_box = self._build_match_box()

        lay = QVBoxLayout(self)
        for w in (inputs, attack_box, self.params_box, opts):
            lay.addWidget(w)
        lay.addLayout(rrow)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(match_box)
        lay.addStretch(1)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(LIVE_DEBOUNCE_MS)
        self._flush = QTimer(self)  # hidden result layers catch up once the slider rests
        self._flush.setSingleShot(True)
        self._flush.setInterval(400)
        self._live_images = LatestWins(self._live_compute, self._live_show, "live ε",
                                       on_error=self._live_error)
        self._live_metrics = LatestWins(self._live_metrics_compute, self._live_metrics_show, "live ε readouts")

        self._add_callbacks()
        self._refresh_layer_combos()
        self._method_changed()
        self.set_eps(0.05)
        self._update_match_controls()

    # ------------------------------------------------------------------ building the dock
    def _build_inputs(self) -> QGroupBox:
        """Image and ground truth pickers."""
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip("Ground truth: gradient attacks and Dice use it; 'none' uses the "
                                     "model's clean prediction as the reference")
        inputs = QGroupBox("Input")
        fi = QFormLayout(inputs)
        fi.addRow("image", self.image_combo)
        fi.addRow("ground truth", self.labels_combo)

        return inputs

    def _build_attack_box(self) -> QGroupBox:
        """Method (from the registry), ε slider + spin box with the native values, live ε."""
        self.method = QComboBox()
        for spec in self.registry.values():
            self.method.addItem(spec.label, spec.name)
            self.method.setItemData(self.method.count() - 1, spec.description, Qt.ToolTipRole)
        self.eps_slider = QSlider(Qt.Horizontal)
        self.eps_slider.setRange(0, int(EPS_MAX_PERCENT * EPS_STEPS_PER_PERCENT))
        self.eps_spin = QDoubleSpinBox()
        self.eps_spin.setRange(0.0, EPS_MAX_PERCENT)
        self.eps_spin.setDecimals(1)
        self.eps_spin.setSingleStep(0.5)
        self.eps_spin.setSuffix(" %")
        self.eps_native = QLabel("")
        self.eps_native.setWordWrap(True)
        self.eps_native.setToolTip("ε in the image's own units, per channel (ε × that channel's intensity range)")
        self.live = QCheckBox("live ε (FGSM: one forward per slider move)")
        attack_box = QGroupBox("Attack")
        fa = QFormLayout(attack_box)
        fa.addRow("method", self.method)
        row = QHBoxLayout()
        row.addWidget(self.eps_slider, 1)
        row.addWidget(self.eps_spin)
        fa.addRow("ε", row)
        fa.addRow("", self.eps_native)
        fa.addRow("", self.live)

        return attack_box

    def _build_options(self) -> QGroupBox:
        """The method's own parameters (a magicgui form, filled per method), target, region, seed."""
        self.params_box = QGroupBox("Parameters")
        self.params_form = QFormLayout(self.params_box)
        self.target_combo = QComboBox()
        self.target_combo.setToolTip("Targeted attacks: every voxel pushed to a label value, or a Labels "
                                     "layer painted with the target labels")
        self.roi_combo = QComboBox()
        self.roi_combo.setToolTip("Where the perturbation may go: a Labels or Shapes layer (non-zero inside)")
        self.seed = QSpinBox()
        self.seed.setRange(-1, 2**31 - 1)
        self.seed.setSpecialValueText("random")
        self.seed.setValue(0)
        self.track = QCheckBox("per-iteration Dice/PSNR (plots)")
        self.track.setChecked(True)
        self.track.setToolTip("Record PSNR and Dice at every iteration (one extra forward at the end)")
        opts = QGroupBox("Target, region, seed")
        fo = QFormLayout(opts)
        fo.addRow("target", self.target_combo)
        fo.addRow("region", self.roi_combo)
        fo.addRow("seed", self.seed)
        fo.addRow("", self.track)

        return opts

    def _build_run_row(self) -> QHBoxLayout:
        """Run / Cancel / Save, the progress bar and the status line."""
        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setValue(0)
        self.status = QLabel("load a model (Model dock), pick an image, press Run")
        self.status.setWordWrap(True)
        self.save_btn = QPushButton("Save attack…")
        self.save_btn.setToolTip("Write the result folder (as `medadv attack`) plus a screenshot")
        self.save_btn.setEnabled(False)
        rrow = QHBoxLayout()
        rrow.addWidget(self.run_btn)
        rrow.addWidget(self.cancel_btn)
        rrow.addWidget(self.save_btn)

        return rrow

    def _build_match_box(self) -> QGroupBox:
        """Matched quality: an MR artifact at the current attack's PSNR/SSIM, side by side."""
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
        match_box = QGroupBox("Matched quality (MR artifact vs attack)")
        fm = QFormLayout(match_box)
        mrow = QHBoxLayout()
        mrow.addWidget(self.match_artifact, 1)
        mrow.addWidget(self.match_metric)
        fm.addRow("artifact", mrow)
        brow = QHBoxLayout()
        brow.addWidget(self.match_btn, 1)
        brow.addWidget(self.side_btn)
        fm.addRow(brow)
        fm.addRow(self.match_info)
        self._side = SideBySide(self.viewer)

        return match_box

    # ------------------------------------------------------------------ wiring
    def _add_callbacks(self) -> None:
        self.viewer.layers.events.inserted.connect(self._refresh_layer_combos)
        self.viewer.layers.events.removed.connect(self._refresh_layer_combos)
        self.viewer.layers.events.moved.connect(self._refresh_layer_combos)
        self.method.currentIndexChanged.connect(self._method_changed)
        self.eps_slider.valueChanged.connect(self._slider_moved)
        self.eps_spin.valueChanged.connect(self._spin_changed)
        self.image_combo.currentIndexChanged.connect(self._source_changed)
        self.image_combo.activated.connect(lambda *_: setattr(self, "_image_picked", True))
        self.labels_combo.activated.connect(lambda *_: setattr(self, "_labels_picked", True))
        self.labels_combo.currentIndexChanged.connect(self._invalidate_live)
        self.roi_combo.currentIndexChanged.connect(self._invalidate_live)
        self.live.toggled.connect(self._live_toggled)
        self.run_btn.clicked.connect(lambda: self.run())
        self.cancel_btn.clicked.connect(self.cancel)
        self.save_btn.clicked.connect(lambda: self.save_attack())
        self._debounce.timeout.connect(self._submit_live)
        self._flush.timeout.connect(lambda: flush_deferred(self.viewer))
        self.session.model_changed.connect(self._model_changed)
        self.session.result_changed.connect(lambda shown: self.save_btn.setEnabled(shown is not None))
        self.session.result_changed.connect(self._update_match_controls)
        self.session.matched_changed.connect(self._matched_changed)
        self.image_combo.currentIndexChanged.connect(self._update_match_controls)
        for combo in (self.image_combo, self.labels_combo, self.roi_combo, self.target_combo):
            combo.currentIndexChanged.connect(self._publish_choices)
        self.match_metric.currentIndexChanged.connect(self._update_match_controls)
        self.match_btn.clicked.connect(lambda: self.match())
        self.side_btn.toggled.connect(self.side_by_side)

    def closeEvent(self, event) -> None:
        self.cancel()
        self.side_by_side(False)
        self.session.result_changed.disconnect(self._update_match_controls)
        self.session.matched_changed.disconnect(self._matched_changed)
        self._live_images.shutdown()
        self._live_metrics.shutdown()
        for sig, slot in ((self.viewer.layers.events.inserted, self._refresh_layer_combos),
                          (self.viewer.layers.events.removed, self._refresh_layer_combos),
                          (self.viewer.layers.events.moved, self._refresh_layer_combos)):
            sig.disconnect(slot)
        self.session.model_changed.disconnect(self._model_changed)
        super().closeEvent(event)

    # ------------------------------------------------------------------ layer combos
    def _image_layers(self):
        out = []
        for lyr in self.viewer.layers:
            if lyr.__class__.__name__ != "Image" or getattr(lyr, "rgb", False):
                continue
            role = lyr.metadata.get(META, {}).get("role", "image")
            if role == "image":
                out.append(lyr)
        return out

    def _refresh_layer_combos(self, event=None) -> None:
        def refill(combo: QComboBox, items: list[tuple[str, Any]], keep=True):
            current = combo.currentData() if keep else None
            combo.blockSignals(True)
            combo.clear()
            for text, data in items:
                combo.addItem(text, data)
            idx = combo.findData(current) if current is not None else -1
            combo.setCurrentIndex(idx if idx >= 0 else 0)
            combo.blockSignals(False)
            return combo.currentData() != current

        images = self._image_layers()
        had = self.image_combo.currentData()
        refill(self.image_combo, [(lyr.name, lyr.name) for lyr in images])
        if not self._image_picked and images:  # until the user picks: the contrast on screen
            visible = [lyr.name for lyr in images if lyr.visible]
            if visible:
                self.image_combo.blockSignals(True)
                self.image_combo.setCurrentIndex(self.image_combo.findData(visible[-1]))
                self.image_combo.blockSignals(False)
        changed = self.image_combo.currentData() != had
        labels = [lyr for lyr in self.viewer.layers if lyr.__class__.__name__ == "Labels"
                  and not lyr.metadata.get(META, {}).get("derived")]
        cur_labels = self.labels_combo.currentData()
        refill(self.labels_combo, [("none (clean prediction as reference)", _NONE)]
               + [(lyr.name, lyr.name) for lyr in labels])
        masks = [lyr for lyr in self.viewer.layers if lyr.__class__.__name__ in ("Labels", "Shapes")
                 and not lyr.metadata.get(META, {}).get("derived")]
        refill(self.roi_combo, [("auto (non-zero voxels)", "auto"), ("whole image", _NONE)]
               + [(f"mask: {lyr.name}", lyr.name) for lyr in masks])
        self._refresh_targets()
        if changed or cur_labels is None:
            self._source_changed()
        elif not self._labels_picked:
            self._preselect_ground_truth()
        self._publish_choices()  # the combos were refilled with their signals blocked

    def _refresh_targets(self) -> None:
        from napari_medadv.core.attacks import ATTACKS

        spec = ATTACKS.get_spec(self.method.currentData())
        current = self.target_combo.currentData()
        self.target_combo.blockSignals(True)
        self.target_combo.clear()
        if spec.targeted != "required":
            self.target_combo.addItem("none (untargeted)", None)
        model = self.session.model
        if model is not None and model.info.task == "classification":
            for i, n in enumerate(model.info.class_names or []):
                self.target_combo.addItem(f"class: {n}", f"class:{n}")
        else:
            values = (model.info.label_values if model is not None and model.info.label_values else [0, 1, 2, 4])
            for v in values:
                self.target_combo.addItem(f"label {v} everywhere", f"value:{int(v)}")
            for lyr in self.viewer.layers:
                if lyr.__class__.__name__ == "Labels" and not lyr.metadata.get(META, {}).get("derived"):
                    self.target_combo.addItem(f"mask: {lyr.name}", f"mask:{lyr.name}")
        idx = self.target_combo.findData(current)
        if idx < 0 and spec.targeted == "required":
            idx = self.target_combo.findData("value:1")
        self.target_combo.setCurrentIndex(max(idx, 0))
        self.target_combo.blockSignals(False)
        self.target_combo.setEnabled(spec.targeted != "no")
        self._publish_choices()

    def source_layer(self):
        name = self.image_combo.currentData()
        if name is None or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def _source_changed(self, *_) -> None:
        self._ranges = None
        self._preselect_ground_truth()
        self._invalidate_live()
        self._update_native()

    def _preselect_ground_truth(self) -> None:
        """The ground truth that came with the source's case (reader convention), if any."""
        layer = self.source_layer()
        if layer is None:
            return
        try:
            src = source_from_layer(self.viewer, layer)
        except MedadvError:  # a layer the dock cannot attack: Run reports why; nothing to pre-select
            return
        gt = labels_for(self.viewer, src)
        idx = self.labels_combo.findData(gt.name if gt is not None else _NONE)
        if idx >= 0 and idx != self.labels_combo.currentIndex():
            self.labels_combo.blockSignals(True)
            self.labels_combo.setCurrentIndex(idx)
            self.labels_combo.blockSignals(False)
            self._publish_choices()

    # ------------------------------------------------------------------ method / params
    def _method_changed(self, *_) -> None:
        from napari_medadv.core.attacks import ATTACKS

        spec = ATTACKS.get_spec(self.method.currentData())
        old = {k: f.value() for k, f in self._fields.items()}
        while self.params_form.rowCount():
            self.params_form.removeRow(0)
        self._fields = {}
        for p in spec.params:
            if p.name == "eps":
                continue
            f = ParamField(p)
            if p.name in old and old[p.name] is not None:
                f.set_value(old[p.name])
            self._fields[p.name] = f
            self.params_form.addRow(p.name, f.widget)
        self.params_box.setVisible(bool(self._fields))
        eps_default = next((p.default for p in spec.params if p.name == "eps"), None)
        self._has_eps = any(p.name == "eps" for p in spec.params)  # MR artifacts have a severity instead
        for w in (self.eps_slider, self.eps_spin, self.eps_native):
            w.setEnabled(self._has_eps)
        self.eps_native.setVisible(self._has_eps)
        if eps_default is not None and not old and self.eps_slider.value() == 0:
            self.set_eps(eps_default)
        self.live.setEnabled(spec.live_eps)
        if not spec.live_eps and self.live.isChecked():
            self.live.setChecked(False)
        self.track.setEnabled(not spec.gradient_free and spec.iterative)
        self._refresh_targets()

    def attack_name(self) -> str:
        return self.method.currentData()

    def set_attack(self, name: str, **params) -> None:
        """Select an attack and set its parameters (for scripts, the demo and tests)."""
        idx = self.method.findData(name)
        if idx < 0:
            raise ValueError(f"unknown attack {name!r}")
        self.method.setCurrentIndex(idx)
        for k, v in params.items():
            if k == "eps" and self._has_eps:
                self.set_eps(v)
            elif k in self._fields:
                self._fields[k].set_value(v)
            else:
                raise ValueError(f"{name} has no parameter {k!r}")

    def params(self) -> dict:
        out = {"eps": self.eps()} if self._has_eps else {}
        for k, f in self._fields.items():
            v = f.value()
            if v is not None:
                out[k] = v
        return out

    # ------------------------------------------------------------------ ε
    def eps(self) -> float:
        return round(self.eps_spin.value(), 4) / 100.0

    def set_eps(self, eps: float) -> None:
        self.eps_spin.setValue(100.0 * float(eps))

    def _slider_moved(self, v: int) -> None:
        pct = v / EPS_STEPS_PER_PERCENT
        if abs(self.eps_spin.value() - pct) > 1e-9:
            self.eps_spin.blockSignals(True)
            self.eps_spin.setValue(pct)
            self.eps_spin.blockSignals(False)
        self._eps_changed()

    def _spin_changed(self, pct: float) -> None:
        v = int(round(pct * EPS_STEPS_PER_PERCENT))
        if self.eps_slider.value() != v:
            self.eps_slider.blockSignals(True)
            self.eps_slider.setValue(v)
            self.eps_slider.blockSignals(False)
        self._eps_changed()

    def _eps_changed(self) -> None:
        self._update_native()
        if self.live.isChecked():
            self._debounce.start()

    def _update_native(self) -> None:
        layer = self.source_layer()
        if layer is None:
            self.eps_native.setText("")
            return
        if self._ranges is None or self._ranges[0] != layer.name:
            try:
                src = source_from_layer(self.viewer, layer)
            except MedadvError as exc:  # say why there are no native values (Run reports it too)
                self.eps_native.setText(str(exc).splitlines()[0])
                return
            a = src.image.array.reshape(src.image.n_channels, -1)
            self._ranges = (layer.name, src.image.channel_names, a.max(1) - a.min(1))
        _, names, widths = self._ranges
        e = self.eps()
        parts = [f"{n} ±{_fmt(e * w)}" for n, w in zip(names, widths)]
        self.eps_native.setText("native: " + " · ".join(parts))

    # ------------------------------------------------------------------ gather inputs
    def _choices(self) -> Choices:
        """The dock's current choices as layer names (what the session shares with the other docks)."""
        lname = self.labels_combo.currentData()
        rname = self.roi_combo.currentData()
        return Choices(
            image=self.image_combo.currentData(),
            labels=None if lname in (None, _NONE) else lname,
            roi="auto" if rname == "auto" else (None if rname in (None, _NONE) else rname),
            target=self.target_combo.currentData() if self.target_combo.isEnabled() else None,
        )

    def _publish_choices(self, *_) -> None:
        self.session.set_choices(self._choices())

    def _context(self):
        """(source, labels array, roi, target) for the current choices; raises MedadvError."""
        self._publish_choices()
        return context_from_choices(self.viewer, self.session.choices)

    # ------------------------------------------------------------------ run / cancel
    def run(self) -> Job | None:
        """Start the selected attack in a worker. The result lands on the layers of the image it
        was started on, even if the selection changes meanwhile."""
        from napari.utils.notifications import show_error

        from napari_medadv.core.attacks import ATTACKS

        model = self.session.model
        if model is None:
            show_error("load a model first (Model dock)")
            return None
        if self._job is not None and self._job.running:
            show_error("an attack is already running: wait or press Cancel")
            return None
        try:
            src, labels, roi, target = self._context()
            name = self.attack_name()
            spec = ATTACKS.get_spec(name)
            params = self.params()
            if self.track.isEnabled() and self.track.isChecked():
                params["track_metrics"] = True
            model.check_image(src.image.array, src.case, src.image.channel_names)
        except Exception as e:
            report_error(e, "attack")
            return None
        seed = None if self.seed.value() < 0 else self.seed.value()
        model_b = self.session.transfer_model
        self.side_by_side(False)  # a new attack result ends the match: restore the layers first
        total = self._expected_steps(spec, params)
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.status.setText(f"running {spec.label} on {src.case} …")
        self.run_btn.setEnabled(False)
        self.match_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.session.run_started.emit(name)
        history: list[dict] = []
        t0 = time.perf_counter()

        def on_step(record):
            history.append(record)
            self.progress.setMaximum(max(self.progress.maximum(), int(record["step"])))
            self.progress.setValue(int(record["step"]))
            self.session.step.emit(name, record)

        def on_done(res):
            outcome, transfer = res

            def shown():
                self.session.set_shown(Shown(src, outcome, live=False, transfer=transfer, history=history,
                                             roi=roi))
                self.status.setText(f"{spec.label} on {src.case}: done in {time.perf_counter() - t0:.1f} s — "
                                    f"{_headline(outcome)}")

            self._apply_gradually(iter_show_outcome(self.viewer, src, outcome), shown)

        def on_cancel():
            self.status.setText(f"{spec.label} cancelled — layers unchanged")

        def on_finish():
            self.run_btn.setEnabled(True)
            self.cancel_btn.setEnabled(False)
            self._update_match_controls()
            if not self._job.cancelled and self.status.text().startswith("running"):
                self.status.setText(f"{spec.label} failed (see the notification)")

        self._job = Job(attack_job, src, model, name, params, labels, target, roi, seed, model_b,
                        desc=f"{spec.label} on {src.case}", total=total, on_yield=on_step, on_done=on_done,
                        on_cancel=on_cancel, on_finish=on_finish, on_oom=self.use_cpu).start()
        return self._job

    def _apply_gradually(self, steps, then) -> None:
        """Run a layer-update generator one layer per event-loop turn, then ``then()``."""
        self._applying += 1

        def tick():
            try:
                next(steps)
            except StopIteration:
                self._applying -= 1
                then()
            except Exception as e:  # a layer could not be updated (e.g. removed meanwhile)
                self._applying -= 1
                report_error(e, "showing the result")
            else:
                QTimer.singleShot(0, tick)

        tick()

    def use_cpu(self) -> None:
        """Move the model(s) to the CPU (offered after a GPU out-of-memory error); the Model dock
        follows the session's device_changed signal."""
        from napari.utils.notifications import show_info

        self.session.move_models("cpu")
        show_info("the model now runs on the CPU: press Run again")

    @staticmethod
    def _expected_steps(spec, params) -> int:
        if spec.gradient_free and "max_queries" in params:
            return int(params["max_queries"])
        steps = int(params.get("steps", 1))
        return steps * int(params.get("restarts", 1))

    def cancel(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()
        if self._live_job is not None and self._live_job.running:
            self._live_job.cancel()
        self._live_images.clear()
        self._live_metrics.clear()

    @property
    def running(self) -> bool:
        return bool(self._applying or (self._job is not None and self._job.running)
                    or (self._live_job is not None and self._live_job.running)
                    or self._live_images.busy or self._live_metrics.busy)

    # ------------------------------------------------------------------ live ε
    def _model_changed(self, model) -> None:
        self._invalidate_live()
        self._refresh_targets()

    def _invalidate_live(self, *_) -> None:
        self._live = None
        self._live_images.clear()
        if self.live.isChecked():
            self._debounce.start()

    def _live_toggled(self, on: bool) -> None:
        if on:
            self._debounce.start()
        else:
            self._live_images.clear()

    def _live_key(self):
        return (self.image_combo.currentData(), self.labels_combo.currentData(), self.roi_combo.currentData(),
                id(self.session.model))

    def _submit_live(self) -> None:
        """Debounced slider: prepare FGSM once per (image, labels, region, model), then submit ε."""
        if not self.live.isChecked() or self.session.model is None:
            return
        key = self._live_key()
        if self._live is not None and self._live[0] == key:
            eps = self.eps()
            self._live_t0[eps] = time.perf_counter()
            self._live_images.submit((self._live[1], self._live[2], eps))
            return
        if self._live_job is not None and self._live_job.running:
            return  # preparing; the latest ε is submitted when it is ready
        try:
            src, labels, roi, _ = self._context()
            self.session.model.check_image(src.image.array, src.case, src.image.channel_names)
        except Exception as e:
            report_error(e, "live ε")
            self.live.setChecked(False)
            return
        self.status.setText(f"live ε: computing the gradient sign on {src.case} (one forward + backward) …")

        def ready(live):
            self._live = (key, src, live)
            self.status.setText(f"live ε on {src.case}: drag the slider (one forward per update)")
            self._submit_live()

        def failed():
            if self._live is None:
                self.live.setChecked(False)

        self._live_job = Job(prepare_live_job, src, self.session.model, labels, roi,
                             desc="live ε: gradient sign", total=1, on_done=ready, on_finish=failed).start()

    @staticmethod
    def _live_compute(job):
        src, live, eps = job
        return src, live, live.outcome(eps, metrics=False)

    def _live_show(self, job, res) -> None:
        src, live, outcome = res
        if self._live is None or self._live[2] is not live:
            return  # the inputs changed meanwhile: drop the stale frame
        if self._side.active:
            self.side_by_side(False)  # a new ε ends the match: restore the layers first
        show_outcome(self.viewer, src, outcome, live=True)
        self._flush.start()
        t0 = self._live_t0.pop(job[2], None)
        if t0 is not None:
            self.last_live_latency = time.perf_counter() - t0
        shown = Shown(src, outcome, live=True, roi=live.roi)
        self.session.set_shown(shown)
        self._live_metrics.submit((shown, live))

    def _live_error(self, exc) -> None:
        report_error(exc, "live ε")
        self.live.setChecked(False)

    @staticmethod
    def _live_metrics_compute(job):
        shown, live = job
        live.add_metrics(shown.outcome)
        return shown

    def _live_metrics_show(self, job, shown) -> None:
        if self.session.shown is shown:
            self.session.metrics_changed.emit(shown)
            self.status.setText(f"live ε = {100 * shown.outcome.result.eps:.1f} % on {shown.source.case} — "
                                f"{_headline(shown.outcome)}")

    # ------------------------------------------------------------------ matched quality
    def current_attack(self) -> Shown | None:
        """The latest attack result, if it was made on the image selected in the dock."""
        shown = self.session.last_attack
        if shown is None or self.image_combo.currentData() not in shown.source.channel_layers:
            return None
        return shown

    def _update_match_controls(self, *_) -> None:
        metric = METRIC_LABELS[self.match_metric.currentData()]
        self.match_btn.setText(f"Match {metric} of current attack")
        attack = self.current_attack()
        busy = self._job is not None and self._job.running
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

    def match(self, artifact: str | None = None, metric: str | None = None) -> Job | None:
        """Search the severity of ``artifact`` (default: the dock's choice) whose ``metric``
        (``"psnr"``/``"ssim"``) equals the current attack's, in a worker with progress and
        Cancel; then show the artifact's layers beside the attack's and both in the readouts."""
        from napari.utils.notifications import show_error, show_warning

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
        artifact, metric = self.match_artifact.currentData(), self.match_metric.currentData()
        if self._job is not None and self._job.running:
            show_error("a job is already running: wait or press Cancel")
            return None
        attack = self.current_attack()
        if attack is None:
            show_error("run an attack on this image first (Run), then match an artifact to it")
            return None
        src, outcome = attack.source, attack.outcome
        model = outcome.model  # the attack's model: its Dice is what the artifact is compared with
        seed = self.seed.value() if self.seed.value() >= 0 else int(np.random.default_rng().integers(2**31))
        label, unit = METRIC_LABELS[metric], METRIC_UNITS[metric]
        art_label = self.match_artifact.currentText()
        was_side_by_side = self._side.active
        self.side_by_side(False)  # the new layers go onto the layers as the user left them
        total = MAX_EVALS + 1
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.status.setText(f"matching {label}: {art_label} vs {outcome.attack} on {src.case} …")
        self.match_info.setText(f"searching the {art_label} severity …")
        self.run_btn.setEnabled(False)
        self.match_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        t0 = time.perf_counter()

        def on_step(record):
            if record is None:
                return
            if "n" in record:
                self.progress.setValue(int(record["n"]))
                self.status.setText(f"matching {label} {record['target']:.4g}{unit}: evaluation {record['n']}, "
                                    f"severity {record['value']:.4f} → {record['quality']:.4g}{unit}")
            elif "running" in record:
                self.progress.setValue(total - 1)
                self.status.setText(f"{art_label} at severity {record['running']:.4f}: segmenting …")

        def on_done(res):
            m, art_outcome = res
            shown = Shown(src, art_outcome, live=False, roi=attack.roi)

            def then():
                self.progress.setValue(total)
                changed = self.session.last_attack is not attack
                self.session.set_shown(shown)
                if changed:  # live ε moved on during the search: the match no longer holds
                    show_warning(f"the attack changed during the match: press 'Match {label} of current "
                                 "attack' again")
                    self.status.setText(f"{art_label} shown; the attack changed meanwhile (not matched)")
                    return
                matched = Matched(attack, shown, m)
                self.session.set_matched(matched)
                self.status.setText(f"matched in {time.perf_counter() - t0:.1f} s — {_headline(art_outcome)}")
                if was_side_by_side:
                    self.side_by_side(True)
                if not m.reached:
                    show_warning(f"{art_label} did not reach {label} {m.target:.4g}{unit}: closest "
                                 f"{m.achieved:.4g}{unit} at severity {m.value:.3f} ({m.note})")

            self._apply_gradually(iter_show_outcome(self.viewer, src, art_outcome), then)

        def on_cancel():
            self.status.setText("match cancelled — layers unchanged")
            previous = self.session.matched  # an earlier match still holds
            self.match_info.setText(previous.summary() if previous is not None else "match cancelled")
            if was_side_by_side and previous is not None:
                self.side_by_side(True)

        def on_finish():
            self.run_btn.setEnabled(True)
            self.cancel_btn.setEnabled(False)
            self._update_match_controls()

        self._job = Job(match_job, src, model, artifact, metric, outcome.adversarial, outcome.labels, attack.roi,
                        seed, desc=f"matching {label}: {art_label} on {src.case}", total=total, hooks=True,
                        on_yield=on_step, on_done=on_done, on_cancel=on_cancel, on_finish=on_finish,
                        on_oom=self.use_cpu).start()
        return self._job

    def _matched_changed(self, matched) -> None:
        if matched is None:
            if self._side.active:
                self.side_btn.setChecked(False)  # restores the layers
        else:
            self.match_info.setText(matched.summary())
        self._update_match_controls()

    def side_by_side(self, on: bool = True) -> None:
        """Grid view of the attack and the matched artifact (on), or the layers as before (off)."""
        from napari.utils.notifications import show_error

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
                show_error(f"side by side: {e}")
                on = False
        if self.side_btn.isChecked() != on:
            self.side_btn.blockSignals(True)
            self.side_btn.setChecked(on)
            self.side_btn.blockSignals(False)
        self._update_match_controls()

    # ------------------------------------------------------------------ export
    def save_attack(self, folder: str | None = None) -> Job | None:
        """Write the result folder of the shown result (same as `medadv attack`) + screenshot.png."""
        from napari.utils.notifications import show_error, show_info

        shown = self.session.shown
        if shown is None:
            show_error("nothing to save yet: run an attack first")
            return None
        if folder is None:
            folder = QFileDialog.getSaveFileName(self, "Save attack to a new folder",
                                                 f"{shown.source.case}-{shown.outcome.attack}")[0]
            if not folder:
                return None
        if not shown.outcome.metrics:
            shown.outcome.metrics = {}
        extra = {"gui": {"live": shown.live, "source_layers": shown.source.channel_layers,
                         "model_b": shown.transfer.model.spec if shown.transfer is not None else None}}
        if shown.transfer is not None:
            extra["transfer_metrics"] = shown.transfer.metrics

        def done(written):
            shot = Path(folder) / "screenshot.png"
            try:
                from napari_medadv._qt.export import save_screenshot

                save_screenshot(self.viewer, shot)
            except OSError as e:
                show_error(f"screenshot not written: {e}")
            show_info(f"saved the attack to {folder} ({len(written) + 1} files)")
            self.status.setText(f"saved to {folder}")

        self._job = Job(save_job, shown.outcome, folder, extra, desc="saving the attack", total=1,
                        on_done=done).start()
        return self._job


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    digits = max(0, 2 - int(math.floor(math.log10(abs(v)))))
    return f"{v:.{digits}f}"


def _named_per_label(block: dict) -> dict:
    """Per-label Dice under the model's label names, and the foreground when there are several."""
    names = block.get("label_names") or {}
    out = {names.get(k, f"label {k}"): v for k, v in (block.get("per_label") or {}).items()}
    if len(out) != 1:
        out["foreground"] = block["foreground"]
    return out


def _headline(o) -> str:
    m = o.metrics or {}
    if "dice" in m:
        block = m["dice"].get("ground_truth_vs_adversarial") or m["dice"]["clean_vs_adversarial"]
        ref = "vs ground truth" if "ground_truth_vs_adversarial" in m["dice"] else "vs clean"
        regs = block.get("regions") or _named_per_label(block)
        return "Dice " + ref + ": " + ", ".join(f"{k} {v:.3f}" for k, v in regs.items())
    if "probabilities" in m:
        return ", ".join(f"{k} {v['clean']:.2f}→{v['adversarial']:.2f}" for k, v in m["probabilities"].items())
    return ""
