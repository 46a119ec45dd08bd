"""The evaluation sanity checks of the shown result's model, in the Readouts dock: a button that runs
:func:`napari_medadv.core.sanity.run_sanity_checks` in a worker (on the shown image, with its ground
truth, region and seed; model B, when loaded, is the transfer source of the black-box check), then one
row per check — pass/FAIL, the value — with the check's full message as the row's tooltip, and a
napari warning per violation. The rows stay while the same image and model are shown."""

from __future__ import annotations

from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .session import Session, Shown


def sanity_job(image, model, labels, roi, seed: int, source, *, should_stop, report):
    """Generator for a worker: every sanity check of ``model`` on ``image`` (``source``: the transfer
    model or None); progress names each stage. Returns the report as a dict."""
    from napari_medadv.core.sanity import run_sanity_checks  # the pipeline: not at dock creation

    yield 0, 1, None
    return run_sanity_checks(image, model, labels=labels, roi=roi, seed=seed, source_model=source, warn=False,
                             progress=lambda text: report(0, 1, text)).to_dict()


def sanity_rows(result: dict) -> list[tuple[str, str, str, str]]:
    """``(check, "pass" | "FAIL", value, message)`` per check of a ``SanityReport.to_dict()``."""
    out = []
    for c in result["checks"]:
        v = c.get("value")
        out.append((c["name"], "pass" if c["passed"] else "FAIL", "" if v is None else f"{v:.4g}", c["message"]))
    return out


def _key(shown: Shown, source) -> tuple:
    return (shown.source.case, shown.outcome.model.spec, id(shown.outcome.model),
            None if source is None else id(source))


class SanityPanel(QWidget):
    """"Sanity checks" button + a table of the checks of the shown result's model."""

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        self.button = QPushButton("Sanity checks")
        self.button.setToolTip(
            "Evaluation sanity checks of the shown result's model on the shown image (AutoAttack-style, adapted to "
            "segmentation): zero/non-finite input gradients, stochastic outputs (EOT needed), robustness "
            "non-increasing in ε and steps, no black-box attack (noise; PGD crafted on model B when loaded) "
            "stronger than white-box. About 25 forward/backward passes.")
        self.button.setEnabled(False)
        self.status = QLabel("")
        self.table = QTableWidget(0, 3)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setHorizontalHeaderLabels(["sanity check", "result", "value"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.setVisible(False)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.button)
        row.addWidget(self.status, 1)
        lay.addLayout(row)
        lay.addWidget(self.table)
        self.result: tuple | None = None  # (key it was computed for, report dict)
        self.job = None
        self.button.clicked.connect(lambda: self.run())

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def run(self):
        """Start the checks for the shown result (a worker with Cancel in the activity panel)."""
        from .workers import Job

        shown = self.session.shown
        if shown is None or self.busy:
            return None
        o = shown.outcome
        source = self.session.transfer_model
        source = None if source is None or source is o.model else source
        key = _key(shown, source)

        def done(result):
            self.result = (key, result)
            self._warn(result)
            self.update_from(self.session.shown)

        self.button.setEnabled(False)
        self.status.setText("running …")
        self.job = Job(sanity_job, shown.source.image, o.model, o.labels, shown.roi, o.seed, source,
                       desc=f"sanity checks of {o.model.spec} on {shown.source.case}", total=1, hooks=True,
                       on_done=done, on_yield=lambda text: text and self.status.setText(str(text)),
                       on_finish=self._finished).start()
        return self.job

    def _finished(self) -> None:
        self.button.setEnabled(self.session.shown is not None)
        if self.result is None:
            self.status.setText("")

    def cancel(self) -> None:
        if self.busy:
            self.job.cancel()

    @staticmethod
    def _warn(result: dict) -> None:
        from napari.utils.notifications import show_warning

        for name, verdict, _, message in sanity_rows(result):
            if verdict == "FAIL":
                show_warning(f"{result['model']}: sanity check '{name}' failed: {message}")

    def update_from(self, shown: Shown | None) -> None:
        """Show the stored checks when they belong to the shown image and model, else nothing."""
        self.button.setEnabled(shown is not None and not self.busy)
        source = self.session.transfer_model
        source = None if shown is None or source is None or source is shown.outcome.model else source
        if shown is None or self.result is None or self.result[0] != _key(shown, source):
            self.table.setVisible(False)
            self.table.setRowCount(0)
            if not self.busy:
                self.status.setText("")
            return
        rows = sanity_rows(self.result[1])
        n_bad = sum(v == "FAIL" for _, v, _, _ in rows)
        self.status.setText("all checks pass" if not n_bad else f"{n_bad} check(s) FAIL: hover for the warning")
        self.table.setRowCount(len(rows))
        for i, (name, verdict, value, message) in enumerate(rows):
            for j, text in enumerate((name, verdict, value)):
                item = QTableWidgetItem(text)
                item.setToolTip(message)
                if verdict == "FAIL":
                    item.setForeground(QColor("#d04040"))
                self.table.setItem(i, j, item)
        self.table.setVisible(True)

    def csv_rows(self) -> list[list[str]]:
        """The shown checks as CSV rows (check, result, value, message); none when hidden."""
        if self.table.isHidden() or self.result is None:
            return []
        return [list(r) for r in sanity_rows(self.result[1])]
