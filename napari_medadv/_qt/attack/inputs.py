"""The Attack dock's inputs: which layers it attacks (image, ground truth, region and target, in
combos refilled from the viewer's layers and shared with the other docks as
:class:`~napari_medadv._qt.session.Choices`), and the seed and per-iteration tracking beside them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QSpinBox

from napari_medadv.core.vulnerability import VulnerabilityOptions

from ..layers import META, case_of_layer, context_from_choices, labels_for_case
from ..session import Choices, Session

if TYPE_CHECKING:
    import napari

    from napari_medadv.core.attacks import AttackSpec

_NONE = "none"


def _refill(combo: QComboBox, items: list[tuple[str, Any]], keep: bool = True) -> bool:
    """Replace a combo's items (signals blocked), keeping the current choice if it is still there;
    True when the choice changed."""
    current = combo.currentData() if keep else None
    combo.blockSignals(True)
    combo.clear()
    for text, data in items:
        combo.addItem(text, data)
    idx = combo.findData(current) if current is not None else -1
    combo.setCurrentIndex(idx if idx >= 0 else 0)
    combo.blockSignals(False)
    return combo.currentData() != current


def _user_layers(viewer: napari.Viewer, *types: str) -> list:
    """Layers of the given types that are not results of this plugin."""
    return [lyr for lyr in viewer.layers if lyr.__class__.__name__ in types
            and not lyr.metadata.get(META, {}).get("derived")]


class InputsPanel:
    """The "Input" box (``input_box``: image, ground truth) and the "Target, region, seed" box
    (``options_box``: target, region, seed, per-iteration tracking).

    ``spec`` is the selected method (which targets it takes; :meth:`set_method` changes it);
    ``on_source_changed()`` runs when another image is picked, ``on_inputs_changed()`` when the
    ground truth or the region changes. Every change is published to the session's choices."""

    def __init__(self, viewer: napari.Viewer, session: Session, spec: AttackSpec, *,
                 on_source_changed: Callable[[], None], on_inputs_changed: Callable[..., None]):
        self.viewer = viewer
        self.session = session
        self._spec = spec
        self._on_source_changed = on_source_changed
        self._on_inputs_changed = on_inputs_changed
        self._watched: list = []  # the picked layers' data/paint emitters (:meth:`_watch`)
        self._watched_ids: tuple = ()
        self._image_picked = False  # until the user picks an image: the contrast on screen
        self._labels_picked = False  # until the user picks a ground truth: the case's own
        self.input_box = self._build_input_box()
        self.options_box = self._build_options_box()
        self.image_combo.currentIndexChanged.connect(self._source_changed)
        self.image_combo.activated.connect(lambda *_: setattr(self, "_image_picked", True))
        self.labels_combo.activated.connect(lambda *_: setattr(self, "_labels_picked", True))
        self.labels_combo.currentIndexChanged.connect(on_inputs_changed)
        self.roi_combo.currentIndexChanged.connect(on_inputs_changed)
        for combo in (self.image_combo, self.labels_combo, self.roi_combo, self.target_combo):
            combo.currentIndexChanged.connect(self.publish)

    def _build_input_box(self) -> QGroupBox:
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

    def _build_options_box(self) -> QGroupBox:
        """Target, region, seed and per-iteration tracking."""
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
        fo.addRow("top-k", self._build_top_percent())
        fo.addRow("seed", self.seed)
        fo.addRow("", self.track)
        fo.addRow("", self._build_vulnerability())

        return opts

    def _build_top_percent(self) -> QDoubleSpinBox:
        """"Perturb only the top-k % most vulnerable voxels" of the region (0 = off)."""
        self.top_percent = QDoubleSpinBox()
        self.top_percent.setRange(0.0, 100.0)
        self.top_percent.setDecimals(2)
        self.top_percent.setSingleStep(1.0)
        self.top_percent.setSuffix(" %")
        self.top_percent.setSpecialValueText("off (the whole region)")
        self.top_percent.setToolTip("Perturb only the k % most vulnerable voxels of the region: ranked by "
                                    "Σ_c |∂loss/∂x| at the clean image (one backward); live ε is off meanwhile")
        return self.top_percent

    def _build_vulnerability(self) -> QHBoxLayout:
        """The vulnerability map switch and its smoothing σ (mm)."""
        self.vulnerability = QCheckBox("vulnerability map")
        self.vulnerability.setToolTip("Add '<case> vulnerability': Σ_c |∂loss/∂x| at the clean image in native "
                                      "units (FGSM: its own gradient; other methods: one extra backward)")
        self.vulnerability_sigma = QDoubleSpinBox()
        self.vulnerability_sigma.setRange(0.0, 50.0)
        self.vulnerability_sigma.setDecimals(1)
        self.vulnerability_sigma.setSuffix(" mm")
        self.vulnerability_sigma.setPrefix("σ ")
        self.vulnerability_sigma.setToolTip("Gaussian smoothing of the map (0: none)")
        row = QHBoxLayout()
        row.addWidget(self.vulnerability)
        row.addWidget(self.vulnerability_sigma)
        return row

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

    def refresh(self, event=None) -> None:
        """Refill the combos from the viewer's layers (a layer was added, removed or moved)."""
        images = self._image_layers()
        had = self.image_combo.currentData()
        _refill(self.image_combo, [(lyr.name, lyr.name) for lyr in images])
        if not self._image_picked and images:  # until the user picks: the contrast on screen
            visible = [lyr.name for lyr in images if lyr.visible]
            if visible:
                self.image_combo.blockSignals(True)
                self.image_combo.setCurrentIndex(self.image_combo.findData(visible[-1]))
                self.image_combo.blockSignals(False)
        changed = self.image_combo.currentData() != had
        cur_labels = self.labels_combo.currentData()
        _refill(self.labels_combo, [("none (clean prediction as reference)", _NONE)]
                + [(lyr.name, lyr.name) for lyr in _user_layers(self.viewer, "Labels")])
        _refill(self.roi_combo, [("auto (non-zero voxels)", "auto"), ("whole image", _NONE)]
                + [(f"mask: {lyr.name}", lyr.name) for lyr in _user_layers(self.viewer, "Labels", "Shapes")])
        self.refresh_targets()
        if changed or cur_labels is None:
            self._source_changed()
        elif not self._labels_picked:
            self._preselect_ground_truth()
        self.publish()  # the combos were refilled with their signals blocked

    def set_method(self, spec: AttackSpec) -> None:
        """The selected method changed: which targets it takes, whether it can track iterations."""
        self._spec = spec
        self.track.setEnabled(not spec.gradient_free and spec.iterative)
        self.refresh_targets()

    def refresh_targets(self) -> None:
        """Targets for the method and the model: class names for a classifier, else label values
        and the Labels layers painted with target labels."""
        spec = self._spec
        current = self.target_combo.currentData()
        self.target_combo.blockSignals(True)
        self.target_combo.clear()
        if spec.targeted != "required":
            self.target_combo.addItem("none (untargeted)", None)
        model = self.session.model
        if model is not None and model.info.task == "classification":
            for n in model.info.class_names or []:
                self.target_combo.addItem(f"class: {n}", f"class:{n}")
        else:
            values = (model.info.label_values if model is not None and model.info.label_values else [0, 1, 2, 4])
            for v in values:
                self.target_combo.addItem(f"label {v} everywhere", f"value:{int(v)}")
            for lyr in _user_layers(self.viewer, "Labels"):
                self.target_combo.addItem(f"mask: {lyr.name}", f"mask:{lyr.name}")
        idx = self.target_combo.findData(current)
        if idx < 0 and spec.targeted == "required":
            idx = self.target_combo.findData("value:1")
        self.target_combo.setCurrentIndex(max(idx, 0))
        self.target_combo.blockSignals(False)
        self.target_combo.setEnabled(spec.targeted != "no")
        self.publish()

    def source_layer(self):
        """The image layer picked in the dock, or None."""
        name = self.image_combo.currentData()
        if name is None or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def _source_changed(self, *_) -> None:
        self._preselect_ground_truth()
        self._on_source_changed()

    def _preselect_ground_truth(self) -> None:
        """The ground truth that came with the source's case (reader convention), if any."""
        layer = self.source_layer()
        if layer is None:
            return
        # from the metadata only: this runs on every layer insert, and building the Source stacks
        # every contrast (a 150 MB copy at BraTS size)
        gt = labels_for_case(self.viewer, case_of_layer(layer))
        idx = self.labels_combo.findData(gt.name if gt is not None else _NONE)
        if idx >= 0 and idx != self.labels_combo.currentIndex():
            self.labels_combo.blockSignals(True)
            self.labels_combo.setCurrentIndex(idx)
            self.labels_combo.blockSignals(False)
            self.publish()

    # ------------------------------------------------------------------ what the dock has picked
    def image_name(self) -> str | None:
        return self.image_combo.currentData()

    def layer_key(self) -> tuple:
        """The picked image, ground truth, region and target (what a live result holds for)."""
        c = self.choices()
        return c.image, c.labels, c.roi, c.target

    def seed_value(self) -> int | None:
        """The seed, or None for "random"."""
        return None if self.seed.value() < 0 else self.seed.value()

    def track_metrics(self) -> bool:
        """Record Dice/PSNR at every iteration (where the method allows it)."""
        return self.track.isEnabled() and self.track.isChecked()

    def vulnerability_options(self) -> VulnerabilityOptions | None:
        """The top-k % region and the vulnerability map asked for, or None (neither)."""
        k = self.top_percent.value()
        if not (k > 0 or self.vulnerability.isChecked()):
            return None
        return VulnerabilityOptions(map=self.vulnerability.isChecked(), sigma_mm=self.vulnerability_sigma.value(),
                                    top_percent=k if k > 0 else None)

    def choices(self) -> Choices:
        """The dock's current choices as layer names (what the session shares with the other docks)."""
        lname = self.labels_combo.currentData()
        rname = self.roi_combo.currentData()
        return Choices(
            image=self.image_combo.currentData(),
            labels=None if lname in (None, _NONE) else lname,
            roi="auto" if rname == "auto" else (None if rname in (None, _NONE) else rname),
            target=self.target_combo.currentData() if self.target_combo.isEnabled() else None,
        )

    def publish(self, *_) -> None:
        choices = self.choices()
        self.session.set_choices(choices)
        self._watch(choices)

    def _watch(self, choices: Choices) -> None:
        """Edits made in place on the picked layers — painting the ground truth, the region or a
        target mask, new data on an image layer — invalidate what live ε keeps, as picking another
        layer does (``on_inputs_changed``)."""
        layers = self._picked_layers(choices)
        ids = tuple(id(lyr) for lyr in layers)
        if ids == self._watched_ids:
            return
        for emitter in self._watched:
            emitter.disconnect(self._edited)
        self._watched = [em for lyr in layers for ev in ("data", "paint")
                         if (em := getattr(lyr.events, ev, None)) is not None]
        for emitter in self._watched:
            emitter.connect(self._edited)
        self._watched_ids = ids

    def _edited(self, *_) -> None:
        self._on_inputs_changed()

    def _picked_layers(self, choices: Choices) -> list:
        """The layers the current choices read: the image's contrasts (its case), the ground truth,
        the region and the target mask."""
        names = [choices.labels, choices.roi if choices.roi != "auto" else None]
        if choices.target is not None and choices.target.startswith("mask:"):
            names.append(choices.target.partition(":")[2])
        image = self.viewer.layers[choices.image] if choices.image in self.viewer.layers else None
        out = []
        if image is not None:
            case = case_of_layer(image)
            out = [lyr for lyr in self.viewer.layers if lyr is image or (
                case_of_layer(lyr) == case and lyr.metadata.get(META, {}).get("role") == "image"
                and not lyr.metadata.get(META, {}).get("derived"))]
        return out + [self.viewer.layers[n] for n in names if n is not None and n in self.viewer.layers]

    def context(self) -> tuple:
        """(source, labels array, roi, target) for the current choices; raises MedadvError."""
        self.publish()
        return context_from_choices(self.viewer, self.session.choices)
