"""The Attack dock's method and parameters: the "Attack" box (method from the engine's registry,
ε slider + spin box with the native values per channel, the live-ε switch) and the "Parameters"
box, where magicgui builds each widget from the method's typed :class:`Param`.

``create_widget(value, annotation, options)`` maps ``int``/``float``/``bool``/``str`` and a
choices tuple onto spin boxes, a check box, a line edit or a combo box with the parameter's range.
magicgui has no "unset" state for numbers, so a parameter whose default is ``None`` (the attack
then picks its own value, e.g. PGD's α = 2.5·ε/steps) gets an *auto* check box beside its widget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, Container, create_widget
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QSlider,
                            QVBoxLayout, QWidget)

from napari_medadv.core.errors import MedadvError

from ..layers import source_from_layer

if TYPE_CHECKING:
    import napari

    from napari_medadv.core.attacks import AttackRegistry, AttackSpec
    from napari_medadv.core.attacks.base import Param

EPS_STEPS_PER_PERCENT = 10  # slider resolution: 0.1 % of the intensity range
LOG_SLIDER_TICKS = 200  # positions of a parameter's log-scale slider (budgets: 10 .. 100 000)
EPS_MAX_PERCENT = 50.0
_INT_LIMIT = 2**31 - 1


def _options(p: Param) -> dict[str, Any]:
    if p.choices:
        return {"choices": list(p.choices)}
    if p.kind is int:
        return {"min": int(p.min) if p.min is not None else -_INT_LIMIT,
                "max": int(min(p.max, _INT_LIMIT)) if p.max is not None else _INT_LIMIT}
    if p.kind is float:
        lo = float(p.min) if p.min is not None else -1e9
        hi = float(p.max) if p.max is not None else 1e9
        return {"min": lo, "max": hi, "step": 0.01 if hi <= 2 else 1.0}
    return {}


def _start_value(p: Param):
    if p.default is not None:
        return p.default
    if p.choices:
        return p.choices[0]
    if p.kind in (int, float):
        return p.kind(p.min if p.min is not None else 0)
    if p.kind is bool:
        return False
    return ""


class ParamField:
    """The widget of one registry :class:`Param`: ``value()`` / ``set_value()``; ``widget`` is the
    QWidget to put in a form. ``None`` means "auto" for a parameter whose default is ``None``."""

    def __init__(self, p: Param):
        self.param = p
        self.optional = p.default is None
        kind = str if p.choices and p.kind is not bool else p.kind
        options = _options(p)
        if p.kind is float:
            options["widget_type"] = "FloatSpinBox"
        self.input = create_widget(value=_start_value(p), annotation=kind, options=options)
        if p.kind is float:
            self.input.native.setDecimals(4)
        self.auto: CheckBox | None = None
        if self.optional and p.kind is not str:
            self.auto = CheckBox(value=True, text="auto")
            self.auto.changed.connect(lambda on: setattr(self.input, "enabled", not on))
            self.input.enabled = False
            box = Container(widgets=[self.auto, self.input], layout="horizontal", labels=False)
            box.margins = (0, 0, 0, 0)
            self.container = box
        else:
            self.container = self.input
        self.widget = self.container.native
        self.widget.setToolTip(f"{p.help} (default {p.default if p.default is not None else 'auto'})")

    def value(self):
        if self.auto is not None and self.auto.value:
            return None
        v = self.input.value
        if self.param.kind is str and not self.param.choices:
            v = str(v).strip() or None
        return v

    def set_value(self, v) -> None:
        if self.auto is not None:
            self.auto.value = v is None
            if v is None:
                return
        if v is None:
            v = ""  # a text parameter with nothing in it
        self.input.value = self.param.kind(v) if self.param.kind in (int, float) else v


class LogSlider:
    """A log-scale slider beside an integer parameter's spin box (DGDE's query budget and pixel
    target, ``AttackSpec.live_search``): dragging spans decades; the two stay in step."""

    def __init__(self, field: ParamField):
        self.field = field
        p = field.param
        self.lo = max(1, int(p.min or 1))
        self.hi = max(self.lo + 1, min(int(p.max or 10**5), 10**5))
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, LOG_SLIDER_TICKS)
        self.slider.setToolTip(f"{p.name}: drag over {self.lo} .. {self.hi} (log scale)")
        self.sync()
        self.slider.valueChanged.connect(self._moved)

    def value_at(self, pos: int) -> int:
        return int(round(self.lo * (self.hi / self.lo) ** (pos / LOG_SLIDER_TICKS)))

    def position_of(self, v) -> int:
        if v is None:
            return LOG_SLIDER_TICKS
        v = min(max(int(v), self.lo), self.hi)
        return int(round(LOG_SLIDER_TICKS * math.log(v / self.lo) / math.log(self.hi / self.lo)))

    def sync(self) -> None:
        """The slider follows the spin box (no signal)."""
        self.slider.blockSignals(True)
        self.slider.setValue(self.position_of(self.field.value()))
        self.slider.blockSignals(False)

    def _moved(self, pos: int) -> None:
        self.field.set_value(self.value_at(pos))  # the spin box's change signal tells the dock


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    digits = max(0, 2 - int(math.floor(math.log10(abs(v)))))
    return f"{v:.{digits}f}"


class MethodPanel:
    """The "Attack" box (``attack_box``: method, ε, native ε, the ``live`` check box) and the
    "Parameters" box (``params_box``: one :class:`ParamField` per parameter of the method).

    ``source_layer()`` is the image picked in the dock (its intensity ranges give the native ε);
    ``on_method_changed(spec)`` runs after the form is filled for a new method,
    ``on_eps_changed()`` after every change of ε."""

    def __init__(self, viewer: napari.Viewer, registry: AttackRegistry, *, source_layer: Callable[[], Any],
                 on_method_changed: Callable[[AttackSpec], None], on_eps_changed: Callable[[], None],
                 on_param_changed: Callable[[str], None] | None = None):
        self.viewer = viewer
        self.registry = registry
        self._source_layer = source_layer
        self._on_method_changed = on_method_changed
        self._on_eps_changed = on_eps_changed
        self._fields: dict[str, ParamField] = {}
        self.sliders: dict[str, LogSlider] = {}
        self._on_param_changed = on_param_changed or (lambda name: None)
        self._has_eps = True
        self._ranges: tuple[str, list[str], Any] | None = None  # (layer name, channel names, intensity ranges)
        self.attack_box = self._build_attack_box()
        self.params_box = QGroupBox("Parameters")
        self.params_form = QFormLayout(self.params_box)
        self.method.currentIndexChanged.connect(self.refresh)
        self.eps_slider.valueChanged.connect(self._slider_moved)
        self.eps_spin.valueChanged.connect(self._spin_changed)

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
        self.live = QCheckBox("live: the layers follow the sliders")
        self.live.setToolTip("FGSM, i-FGSM, ti-FGSM, PGD …: moving ε updates the layers. DGDE: moving the query "
                             "budget or the maximum pixels continues the search from its current solution "
                             "(or shows a solution it already found)")
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

    # ------------------------------------------------------------------ method / params
    def spec(self) -> AttackSpec:
        return self.registry.get_spec(self.method.currentData())

    def refresh(self, *_) -> None:
        """Fill the form for the selected method (keeping the values of the parameters it shares
        with the previous one), enable ε and live ε as it allows, then ``on_method_changed``."""
        spec = self.spec()
        old = {k: f.value() for k, f in self._fields.items()}
        while self.params_form.rowCount():
            self.params_form.removeRow(0)
        self._fields = {}
        self.sliders = {}
        for p in spec.params:
            if p.name == "eps":
                continue
            f = ParamField(p)
            if p.name in old and old[p.name] is not None:
                f.set_value(old[p.name])
            self._fields[p.name] = f
            if p.name in spec.live_search and p.kind is int:
                self.params_form.addRow(p.name, self._with_slider(f))
            else:
                self.params_form.addRow(p.name, f.widget)
        self.params_box.setVisible(bool(self._fields))
        eps_default = next((p.default for p in spec.params if p.name == "eps"), None)
        self._has_eps = any(p.name == "eps" for p in spec.params)  # MR artifacts have a severity instead
        for w in (self.eps_slider, self.eps_spin, self.eps_native):
            w.setEnabled(self._has_eps)
        self.eps_native.setVisible(self._has_eps)
        if eps_default is not None and not old and self.eps_slider.value() == 0:
            self.set_eps(eps_default)
        live = spec.live_eps or spec.warm_start or bool(spec.live_search)
        self.live.setEnabled(live)
        if not live and self.live.isChecked():
            self.live.setChecked(False)
        self._on_method_changed(spec)

    def _with_slider(self, f: ParamField):
        """The field with a log-scale slider under it; changes of either tell ``on_param_changed``."""
        name = f.param.name
        sl = self.sliders[name] = LogSlider(f)
        f.input.changed.connect(lambda *_: (sl.sync(), self._on_param_changed(name)))
        if f.auto is not None:
            f.auto.changed.connect(lambda *_: (sl.sync(), self._on_param_changed(name)))
        box = QWidget()
        col = QVBoxLayout(box)
        col.setContentsMargins(0, 0, 0, 0)
        col.addWidget(f.widget)
        col.addWidget(sl.slider)
        return box

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
        self._on_eps_changed()

    def source_changed(self) -> None:
        """Another image was picked: its intensity ranges are read again for the native ε."""
        self._ranges = None
        self._update_native()

    def _update_native(self) -> None:
        layer = self._source_layer()
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
