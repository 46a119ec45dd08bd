"""Model dock: pick a demo model or load a TorchScript file / MONAI bundle / factory (with the
trust checkbox); shows task, labels and device; optional second model for transfer evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_medadv.core.errors import MedadvError
from napari_medadv.core.models import load_model
from napari_medadv.core.models.channels import parse_channel_list
from napari_medadv.core.models.registry import describe_device
from napari_medadv.core.pipeline import model_input

from .results import show_clean_prediction as show_prediction_layer
from .layers import source_from_layer
from .session import Session
from .workers import Job
from .docking import scrolling, tab_on_first_show

if TYPE_CHECKING:
    import napari

#: (label, spec or scheme, needs a path)
CHOICES = [
    ("Demo: 3-D UNet, glioma (4 MR contrasts)", "demo:unet3d", False),
    ("Demo: 2-D UNet slice by slice, glioma", "demo:unet2d", False),
    ("Demo: chest radiograph classifier", "demo:cxr", False),
    ("TorchScript file…", "torchscript", True),
    ("MONAI bundle folder…", "bundle", True),
    ("Factory (module:function + weights)…", "factory", True),
    ("nnU-Net v2 result folder (DIR[:folds][:notta])…", "nnunet", True),
]


def _load_job(spec: str, weights: str | None, trust: bool, device: str, preprocess: str | None = None):
    yield 0, 1, None
    model = load_model(spec, weights=weights or None, trust_code=trust, device=device, preprocess=preprocess)
    yield 1, 1, None
    return model


def describe_model(model) -> str:
    info = model.info
    lines = [f"<b>{info.name or model.spec}</b>"]
    if info.description:
        lines.append(info.description)
    task = f"{info.task}, {info.spatial_dims}-D, {info.in_channels} input channel(s)"
    if info.channel_names:
        task += f" ({', '.join(info.channel_names)})"
    lines.append(task)
    if info.bias_correction or info.resize_to:
        steps = (["N4 bias-field correction"] if info.bias_correction else []) + (
            ["resize to " + "×".join(map(str, info.resize_to))] if info.resize_to else [])
        lines.append("preprocessing: " + ", ".join(steps))
    if info.task == "segmentation":
        if info.region_names:
            lines.append("regions: " + ", ".join(info.region_names))
        elif info.label_values:
            lines.append("labels: " + ", ".join(
                f"{v} {info.label_name(v)}" if info.label_name(v) != str(v) else str(v) for v in info.label_values))
    elif info.class_names:
        lines.append("classes: " + ", ".join(info.class_names) + f" ({info.output})")
    lines.append("device: " + describe_device(model.device))
    return "<br>".join(lines)


class _ModelPicker(QWidget):
    """One model choice: combo, path + browse, trust checkbox, device, Load."""

    def __init__(self, parent=None, *, allow_none: bool = False):
        super().__init__(parent)
        self.combo = QComboBox()
        if allow_none:
            self.combo.addItem("none (evaluate on the attacked model)", None)
        for label, spec, _ in CHOICES:
            self.combo.addItem(label, spec)
        self.path = QLineEdit()
        self.path.setPlaceholderText("file / folder / package.module:function")
        self.browse = QToolButton()
        self.browse.setText("…")
        self.weights = QLineEdit()
        self.weights.setPlaceholderText("state-dict weights (.pt) for a factory")
        self.trust = QCheckBox("trust model code")
        self.trust.setToolTip("TorchScript files, MONAI bundles and factories run code from the file: "
                              "tick this only for models you trust")
        self.liu = QCheckBox("Liu preprocessing (N4 + 128³)")
        self.liu.setToolTip("Liu et al. 2021: N4 bias-field correction (fitted on the clean image, then held fixed) "
                            "and resize to 128³, inside the model — attacks still perturb your image. 3-D MR models")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu"])
        try:
            import torch  # already imported by the time a dock exists? only if a model was loaded

            for i in range(torch.cuda.device_count()):
                self.device.addItem(f"cuda:{i}")
            if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                self.device.addItem("mps")
        except ImportError:
            pass
        self.load_btn = QPushButton("Load")

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("model", self.combo)
        row = QHBoxLayout()
        row.addWidget(self.path)
        row.addWidget(self.browse)
        self._path_row = QWidget()
        self._path_row.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        form.addRow("path", self._path_row)
        form.addRow("weights", self.weights)
        form.addRow("", self.trust)
        form.addRow("", self.liu)
        form.addRow("device", self.device)
        form.addRow("", self.load_btn)
        self._form = form
        self.combo.currentIndexChanged.connect(self._update_visibility)
        self.browse.clicked.connect(self._browse)
        self._update_visibility()

    def spec(self) -> tuple[str | None, str | None]:
        scheme = self.combo.currentData()
        if scheme is None or scheme.startswith("demo:"):
            return scheme, None
        value = self.path.text().strip()
        if not value:
            raise ValueError(f"enter the {scheme} path first")
        return f"{scheme}:{value}", self.weights.text().strip() or None

    def _update_visibility(self) -> None:
        scheme = self.combo.currentData()
        needs_path = scheme is not None and not scheme.startswith("demo:")
        for w in (self._path_row, self.trust):
            w.setVisible(needs_path)
            self._form.labelForField(w).setVisible(needs_path) if self._form.labelForField(w) else None
        self.weights.setVisible(scheme == "factory")
        if self._form.labelForField(self.weights):
            self._form.labelForField(self.weights).setVisible(scheme == "factory")
        self.browse.setVisible(scheme in ("torchscript", "bundle"))

    def _browse(self) -> None:
        scheme = self.combo.currentData()
        if scheme == "bundle":
            path = QFileDialog.getExistingDirectory(self, "MONAI bundle folder")
        else:
            path, _ = QFileDialog.getOpenFileName(self, "TorchScript file", "", "TorchScript (*.pt *.pth *.ts);;All (*)")
        if path:
            self.path.setText(path)


class ModelWidget(QWidget):
    """The Model dock."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        tab_on_first_show(self, napari_viewer)
        self.viewer = napari_viewer
        self.session = Session.of(napari_viewer)
        self._job: Job | None = None

        self.picker = _ModelPicker(self)
        self.info = QLabel("no model loaded")
        self.info.setWordWrap(True)
        self.info.setTextFormat(Qt.RichText)
        self.channels = QLineEdit()
        self.channels.setPlaceholderText("matched by name (e.g. t1ce,t1,t2,flair to override)")
        self.channels.setToolTip(
            "Which image channel feeds each model input, in the model's order (names or 0-based indices). "
            "Empty: channels are matched to the model's declared input names (T1 = t1n = T1w, "
            "T1c = t1ce = T1Gd, T2 = t2w, FLAIR = t2f); a model that declares none gets file order.")
        self.channel_note = QLabel("")
        self.channel_note.setWordWrap(True)
        self.channel_note.setTextFormat(Qt.PlainText)
        self.predict_btn = QPushButton("Show clean prediction")
        self.predict_btn.setToolTip("Run the model on the selected image and show its segmentation "
                                    "(or class probabilities in the Readouts dock)")
        self.predict_btn.setEnabled(False)

        self.transfer_box = QGroupBox("Transfer: evaluate on a second model (B)")
        self.transfer_box.setCheckable(True)
        self.transfer_box.setChecked(False)
        tl = QVBoxLayout(self.transfer_box)
        self.picker_b = _ModelPicker(self, allow_none=False)
        self.info_b = QLabel("craft on the model above (A), evaluate the adversarial image on B")
        self.info_b.setWordWrap(True)
        self.info_b.setTextFormat(Qt.RichText)
        tl.addWidget(self.picker_b)
        tl.addWidget(self.info_b)
        self.picker_b.setVisible(False)
        self.info_b.setVisible(False)

        self.form = QWidget()  # scrolls inside the dock (docking.scrolling)
        lay = QVBoxLayout(self.form)
        lay.addWidget(self.picker)
        lay.addWidget(self.info)
        crow = QFormLayout()
        crow.setContentsMargins(0, 0, 0, 0)
        crow.addRow("channels", self.channels)
        lay.addLayout(crow)
        lay.addWidget(self.channel_note)
        lay.addWidget(self.predict_btn)
        lay.addWidget(self.transfer_box)
        lay.addStretch(1)
        self.scroll = scrolling(self, self.form)
        self._add_callbacks()

    def _add_callbacks(self) -> None:
        self.picker.load_btn.clicked.connect(lambda: self.load())
        self.picker_b.load_btn.clicked.connect(lambda: self.load(transfer=True))
        self.predict_btn.clicked.connect(self.show_clean_prediction)
        self.transfer_box.toggled.connect(self._transfer_toggled)
        self.channels.editingFinished.connect(self.apply_channel_map)
        self.viewer.layers.selection.events.active.connect(lambda *_: self.update_channel_note())
        self.session.choices_changed.connect(lambda *_: self.update_channel_note())
        self.session.device_changed.connect(self._device_changed)

    def _device_changed(self, device: str) -> None:
        """The session moved the models (e.g. to the CPU after a GPU out-of-memory error)."""
        for picker in (self.picker, self.picker_b):
            picker.device.setCurrentText(device)
        if self.session.model is not None:
            self.info.setText(describe_model(self.session.model))
        if self.session.transfer_model is not None:
            self.info_b.setText(describe_model(self.session.transfer_model))

    def _image_layer(self):
        """The image the Attack dock has picked (shared through the session), else the selected layer."""
        name = self.session.choices.image
        if name is not None and name in self.viewer.layers:
            return self.viewer.layers[name]
        return self.viewer.layers.selection.active

    # ------------------------------------------------------------------ channels
    def apply_channel_map(self) -> None:
        """Set the model's channel mapping from the 'channels' field (empty: match by name)."""
        from napari.utils.notifications import show_error

        model = self.session.model
        try:
            mapping = parse_channel_list(self.channels.text().strip() or None)
        except ValueError as e:
            show_error(f"channels: {e}")
            return
        if model is not None:
            model.channel_map = mapping
        self.update_channel_note()

    def update_channel_note(self) -> str:
        """Show which image channel feeds which model input for the selected image (or why none can)."""
        model = self.session.model
        if model is None:
            self.channel_note.setText("")
            return ""
        layer = self._image_layer()
        if layer is None:
            text = ("the model declares no channel names: image channels will be used in file order"
                    if not model.info.channel_names else "")
        else:
            try:
                src = source_from_layer(self.viewer, layer)
                text = "channels " + model.match_channels(src.image.channel_names, src.case).describe()
            except MedadvError as e:
                text = f"⚠ {str(e).splitlines()[0]} — set 'channels' above"
        self.channel_note.setText(text)
        return text

    # ------------------------------------------------------------------ actions
    def load(self, spec: str | None = None, *, transfer: bool = False, device: str | None = None,
             trust: bool | None = None) -> Job | None:
        """Load a model in a worker (``spec`` overrides the picker; for scripts and tests)."""
        from napari.utils.notifications import show_error

        picker = self.picker_b if transfer else self.picker
        weights = None
        if spec is None:
            try:
                spec, weights = picker.spec()
            except ValueError as e:
                show_error(str(e))
                return None
        else:
            idx = picker.combo.findData(spec)
            if idx >= 0:
                picker.combo.setCurrentIndex(idx)
        if device is not None:
            picker.device.setCurrentText(device)
        if trust is not None:
            picker.trust.setChecked(trust)
        info = self.info_b if transfer else self.info
        info.setText(f"loading {spec} …")
        picker.load_btn.setEnabled(False)

        def done(model):
            if transfer:
                self.session.set_transfer_model(model)
                self.info_b.setText(describe_model(model))
            else:
                try:
                    model.channel_map = parse_channel_list(self.channels.text().strip() or None)
                except ValueError:
                    model.channel_map = None
                self.session.set_model(model)
                self.info.setText(describe_model(model))
                self.predict_btn.setEnabled(True)
                self.update_channel_note()

        def finish():
            picker.load_btn.setEnabled(True)
            if (self.session.transfer_model if transfer else self.session.model) is None:
                info.setText("no model loaded")

        self._job = Job(_load_job, spec, weights, picker.trust.isChecked(), picker.device.currentText(),
                        "liu" if picker.liu.isChecked() else None, desc=f"loading {spec}", on_done=done, on_finish=finish, total=1).start()
        return self._job

    def _transfer_toggled(self, on: bool) -> None:
        self.picker_b.setVisible(on)
        self.info_b.setVisible(on)
        if not on:
            self.session.set_transfer_model(None)

    def show_clean_prediction(self) -> Job | None:
        from napari.utils.notifications import show_error

        model = self.session.model
        if model is None:
            show_error("load a model first")
            return None
        layer = self._image_layer()
        try:
            source = source_from_layer(self.viewer, layer)
        except Exception as e:  # a MedadvError with a message for the user
            show_error(str(e))
            return None

        def job(source, model):
            yield 0, 1, None
            out = model.forward(model_input(source.image, model))
            if model.info.task == "segmentation":
                return source, model.to_label_map(out)[0].astype("int16"), None
            return source, None, model.probabilities(out)[0].cpu().numpy()

        def done(res):
            from napari.utils.notifications import show_info

            src, seg, probs = res
            if seg is not None:
                show_prediction_layer(self.viewer, src, model, seg)
            else:
                names = model.info.class_names or [str(i) for i in range(len(probs))]
                show_info("clean prediction: " + ", ".join(f"{n} {p:.2f}" for n, p in zip(names, probs)))

        self._job = Job(job, source, model, desc="clean prediction", on_done=done, total=1).start()
        return self._job
