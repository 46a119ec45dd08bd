"""The two faces of the Reader study dock: the set-up form and the trial panel (keys only).

Plain widgets: the dock (:mod:`.widget`) reads their values and connects their signals."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medadv.core.attacks import ATTACKS
from napari_medadv.core.matching import knob_for
from napari_medadv.core.reader import MODES

from ..matched import short_label
from ..progress import ProgressBar
from .cases import CaseChoice

DEFAULT_SOURCES = ("fgsm", "motion")
MODE_LABELS = {"pair": "pair: which one is altered? (← / →)", "single": "single: altered or original? (A / O)"}


def study_sources() -> list[str]:
    """Registered sources with a scalar knob (ε or severity) the matched-PSNR search can set."""
    out = []
    for name in ATTACKS:
        try:
            knob_for(name)
        except ValueError:
            continue
        out.append(name)
    return out


def _checklist(items: list[tuple[str, object]], checked) -> QListWidget:
    w = QListWidget()
    for label, data in items:
        it = QListWidgetItem(label)
        it.setData(Qt.UserRole, data)
        it.setFlags(it.flags() | Qt.ItemIsUserCheckable)
        it.setCheckState(Qt.Checked if checked(label, data) else Qt.Unchecked)
        w.addItem(it)
    w.setMaximumHeight(130)
    return w


def _checked(w: QListWidget) -> list:
    return [w.item(i).data(Qt.UserRole) for i in range(w.count()) if w.item(i).checkState() == Qt.Checked]


class SetupPanel(QWidget):
    """Cases, sources, PSNRs, trials per cell, mode, seed and output CSV; Start / Cancel and the
    progress of making the images."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.cases = QListWidget()
        self.cases.setMaximumHeight(130)
        self.refresh_btn = QPushButton("Refresh cases")
        self.sources = _checklist([(f"{short_label(n)} [{n}]", n) for n in study_sources()],
                                  lambda _label, n: n in DEFAULT_SOURCES)
        self.psnrs = QLineEdit("30, 35, 40")
        self.psnrs.setToolTip("target PSNRs in dB, comma separated (each source is matched to each)")
        self.repeats = QSpinBox()
        self.repeats.setRange(1, 50)
        self.repeats.setValue(2)
        self.mode = QComboBox()
        for m in MODES:
            self.mode.addItem(MODE_LABELS[m], m)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.out = QLineEdit(str(Path.cwd() / "reader_study.csv"))
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        self.start_btn = QPushButton("Start study")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.progress = ProgressBar()
        self.status = QLabel("tick cases and sources, load a model (Model dock), press Start")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("cases", self.cases)
        form.addRow("", self.refresh_btn)
        form.addRow("sources", self.sources)
        form.addRow("target PSNRs (dB)", self.psnrs)
        form.addRow("trials per cell", self.repeats)
        form.addRow("mode", self.mode)
        form.addRow("seed", self.seed)
        row = QHBoxLayout()
        row.addWidget(self.out)
        row.addWidget(browse)
        form.addRow("output CSV", row)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_btn)
        buttons.addWidget(self.cancel_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addStretch(1)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Reader study CSV", self.out.text(), "CSV (*.csv)")
        if path:
            self.out.setText(path)

    def set_cases(self, choices: list[CaseChoice], checked: set[str]) -> None:
        self.cases.clear()
        for c in choices:
            it = QListWidgetItem(c.label)
            it.setData(Qt.UserRole, c)
            it.setFlags(it.flags() | Qt.ItemIsUserCheckable)
            it.setCheckState(Qt.Checked if c.label in checked else Qt.Unchecked)
            self.cases.addItem(it)

    def check(self, widget: QListWidget, labels_or_data, on: bool = True) -> None:
        """Tick (or untick) the entries whose label or data is in ``labels_or_data``."""
        for i in range(widget.count()):
            it = widget.item(i)
            d = it.data(Qt.UserRole)
            if it.text() in labels_or_data or (isinstance(d, str) and d in labels_or_data) or (
                    getattr(d, "label", None) in labels_or_data):
                it.setCheckState(Qt.Checked if on else Qt.Unchecked)

    def checked_cases(self) -> list[CaseChoice]:
        return _checked(self.cases)

    def checked_sources(self) -> list[str]:
        return _checked(self.sources)

    def target_psnrs(self) -> list[float]:
        try:
            vals = [float(t) for t in self.psnrs.text().replace(";", ",").split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"target PSNRs must be numbers separated by commas, got {self.psnrs.text()!r}") from None
        return vals

    def design(self) -> dict:
        return {"repeats": self.repeats.value(), "mode": self.mode.currentData(), "seed": self.seed.value()}

    def busy(self, on: bool) -> None:
        self.start_btn.setEnabled(not on)
        self.cancel_btn.setEnabled(on)



def _code(key) -> int:
    """A key as its integer code, whatever the Qt binding's enum type."""
    return int(getattr(key, "value", key))

class TrialPanel(QWidget):
    """What the dock shows during a trial: the trial number, the keys and the reader's current
    choice — never the case, the source or the PSNR. Keys pressed while it has the focus are
    passed on as ``key`` (the viewer's own key bindings do the same while the canvas has it)."""

    key = Signal(str)

    # by integer code: QKeyEvent.key() is an int under PyQt6/PySide6, the Qt.Key members are enums
    KEYS = {_code(k): v for k, v in {
        Qt.Key_Left: "left", Qt.Key_Right: "right", Qt.Key_A: "a", Qt.Key_O: "o", Qt.Key_1: "1",
        Qt.Key_2: "2", Qt.Key_3: "3", Qt.Key_4: "4", Qt.Key_5: "5", Qt.Key_Space: "next",
        Qt.Key_Return: "next", Qt.Key_Enter: "next", Qt.Key_Escape: "abort"}.items()}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.StrongFocus)
        self.counter = QLabel()
        self.counter.setStyleSheet("font-size: 16px; font-weight: bold")
        self.help = QLabel()
        self.help.setWordWrap(True)
        self.choice = QLabel()
        self.choice.setStyleSheet("font-size: 14px")
        self.stop_btn = QPushButton("Stop (Esc)")
        lay = QVBoxLayout(self)
        for w in (self.counter, self.help, self.choice, self.stop_btn):
            lay.addWidget(w)
        lay.addStretch(1)

    def keyPressEvent(self, event) -> None:
        name = self.KEYS.get(_code(event.key()))
        if name is None:
            super().keyPressEvent(event)
            return
        event.accept()
        self.key.emit(name)

    def show_trial(self, k: int, n: int, mode: str) -> None:
        self.counter.setText(f"Trial {k} of {n}")
        if mode == "pair":
            what = "Which image is altered?  ← left   → right"
        else:
            what = "Is this image altered?  A altered   O original"
        self.help.setText(f"{what}\nConfidence: 1 (guess) … 5 (certain)\nSpace / Enter: next    Esc: stop")
        self.show_choice(None, None)

    def show_choice(self, answer: str | None, confidence: int | None) -> None:
        a = answer or "—"
        c = confidence if confidence is not None else "—"
        self.choice.setText(f"answer: {a}    confidence: {c}")
