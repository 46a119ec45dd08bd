"""Parameter forms for registry attacks: magicgui builds each widget from the typed :class:`Param`.

``create_widget(value, annotation, options)`` maps ``int``/``float``/``bool``/``str`` and a
choices tuple onto spin boxes, a check box, a line edit or a combo box with the parameter's range.
magicgui has no "unset" state for numbers, so a parameter whose default is ``None`` (the attack
then picks its own value, e.g. PGD's α = 2.5·ε/steps) gets an *auto* check box beside its widget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, Container, create_widget

if TYPE_CHECKING:
    from napari_medadv.core.attacks.base import Param

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
