"""Readouts dock: Dice per label/region (ground truth vs clean, ground truth vs adversarial,
clean vs adversarial), image quality (PSNR, SSIM, RMSE, L0, L∞), classifier probabilities —
all straight from :func:`napari_medadv.core.scoring.outcome_metrics` — and Copy as CSV; "Breaks at
ε" rows, and the evaluation sanity checks of the shown model (:mod:`.sanity_panel`).

After "Match PSNR of current attack" (Attack dock) a second table puts the attack and the MR
artifact at the same image quality side by side (:func:`.matched.comparison_rows`)."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .results import is_artifact
from .matched import comparison_rows, knob_text
from .sanity_panel import SanityPanel
from .session import Session, Shown
from .docking import tab_on_first_show

if TYPE_CHECKING:
    import napari

DICE_COLUMNS = (("ground_truth_vs_clean", "GT·clean"), ("ground_truth_vs_adversarial", "GT·adv"),
                ("clean_vs_adversarial", "clean·adv"))
REGION_HELP = {"WT": "whole tumour (1+2+4)", "TC": "tumour core (1+4)", "ET": "enhancing tumour (4)"}


def readout_rows(metrics: dict, transfer: dict | None = None, *,
                 severity: float | None = None) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of the readouts table for one metrics.json dict (strings, formatted).

    ``severity``: the result is an MR artifact: its severity replaces the ε row (an artifact
    has no ε budget; the engine records ε = 1, the whole range)."""
    rows: list[list[str]] = []
    if "dice" in metrics:
        d = metrics["dice"]
        cols = [(k, label if severity is None else label.replace("adv", "artifact"))
                for k, label in DICE_COLUMNS if k in d]
        header = ["Dice / metric"] + [label for _, label in cols]

        def add(label, getter):
            vals = []
            for k, _ in cols:
                try:
                    vals.append(f"{getter(d[k]):.4f}")
                except (KeyError, TypeError):
                    vals.append("")
            rows.append([label] + vals)

        first = d[cols[0][0]]
        for r in (first.get("regions") or {}):
            add(f"Dice {r}", lambda b, r=r: b["regions"][r])
        names = first.get("label_names") or {}
        for lab in first.get("per_label", {}):
            name = names.get(lab, lab)
            add(f"Dice label {lab} ({name})" if name != lab else f"Dice label {lab}",
                lambda b, lab=lab: b["per_label"][lab])
        add("Dice foreground", lambda b: b["foreground"])
        if transfer is not None and "dice" in transfer:
            td = transfer["dice"]
            for r in (td.get("ground_truth_vs_adversarial") or td["clean_vs_adversarial"]).get("regions", {}):
                rows.append([f"B: Dice {r}"] + [f"{td[k]['regions'][r]:.4f}" if k in td else "" for k, _ in cols])
        ncol = len(cols)
    elif "probabilities" in metrics:
        header = ["metric", "clean", "adversarial" if severity is None else "artifact", "change"]
        for n, p in metrics["probabilities"].items():
            flag = " (flipped)" if p["decision_flipped"] else ""
            rows.append([f"P({n}){flag}", f"{p['clean']:.4f}", f"{p['adversarial']:.4f}", f"{p['change']:+.4f}"])
        if transfer is not None and "probabilities" in transfer:
            for n, p in transfer["probabilities"].items():
                rows.append([f"B: P({n})", f"{p['clean']:.4f}", f"{p['adversarial']:.4f}", f"{p['change']:+.4f}"])
        ncol = 3
    else:
        header, ncol = ["metric", "value"], 1
    iq = metrics.get("image_quality")

    def one(label, value):
        rows.append([label, value] + [""] * (ncol - 1))

    if iq:
        one("PSNR dB (all channels)", f"{iq['psnr']:.2f}")
        # the live path fills SSIM last, in the background (core.live.LiveEps.add_ssim_steps, on the torch lane)
        one("SSIM (mean of channels)", "pending …" if iq["ssim"] is None else f"{iq['ssim']:.4f}")
        one("RMSE (native)", f"{iq['rmse']:.4g}")
        one("L0 (changed voxels)", f"{int(iq['l0'])}")
        one("L∞ (native)", f"{iq['linf']:.4g}")
        one("L2 (native)", f"{iq['l2']:.4g}")
    if severity is not None:
        one("severity (0-1)", f"{severity:.4f}")
    elif "eps" in metrics and "dgde_l0" not in metrics:  # DGDE (L0) has no ε budget
        one("ε (% of range)", f"{100 * metrics['eps']:.2f}")
    if "segmentation_changed_voxels" in metrics:
        one("segmentation voxels changed", str(metrics["segmentation_changed_voxels"]))
    if "dgde_l0" in metrics:
        one("DGDE L0 (pixels)", str(metrics["dgde_l0"]))
    if "dgde_pixel_target_met" in metrics:
        one("within max_pixels", "yes" if metrics["dgde_pixel_target_met"] else "no (budget spent first)")
    if "success" in metrics:
        one("success", str(metrics["success"]))
    return header, rows


def breaking_rows(result: dict, ncol: int) -> list[list[str]]:
    """Rows "breaks at ε · KEY" and "Dice-vs-ε AUC · KEY" of a :mod:`~napari_medadv.core.breaking`
    result (``BreakingResult.to_dict()``), the value in the last column (clean·adv / adversarial)."""
    rows = []
    names = result.get("label_names") or {}
    for key, eps in result["breaking_eps"].items():
        shown = f"{key} ({names[key]})" if key in names else key
        value = f"> {100 * result['eps_max']:g} %" if eps is None else f"{100 * eps:.2f} %"
        rows.append([f"breaks at ε · {shown}"] + [""] * (ncol - 1) + [value])
    for key, auc in (result.get("dice_auc") or {}).items():
        rows.append([f"Dice-vs-ε AUC · {key}"] + [""] * (ncol - 1) + [f"{auc:.3f}"])
    return rows


def breaking_job(image, model, attack: str, params: dict, labels, roi, seed: int, *, should_stop, report):
    """Generator for a worker: breaking ε of every label/region (or finding) for the shown result's attack."""
    from napari_medadv.core.breaking import breaking_eps  # the pipeline: not at dock creation

    yield 0, 1, None
    return breaking_eps(image, model, attack, params=params, labels=labels, roi=roi, seed=seed,
                        should_stop=should_stop).to_dict()


def _breaking_key(shown: Shown) -> tuple:
    o = shown.outcome
    params = tuple(sorted((k, repr(v)) for k, v in o.params.items() if k != "eps"))
    return (shown.source.case, o.model.spec, id(o.model), o.attack, params, o.seed)


class ReadoutsWidget(QWidget):
    """The Readouts dock."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        tab_on_first_show(self, napari_viewer)
        self.viewer = napari_viewer
        self.session = Session.of(napari_viewer)
        self.title = QLabel("no result yet")
        self.title.setWordWrap(True)
        self.table = QTableWidget(0, 2)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.horizontalHeader().setMinimumSectionSize(56)
        self.copy_btn = QPushButton("Copy as CSV")
        self.copy_btn.setEnabled(False)
        self.breaking_btn = QPushButton("Breaks at ε")
        self.breaking_btn.setToolTip(
            "The smallest ε at which each label/region's Dice against the clean prediction falls below 0.5 "
            "(classifier: each finding's decision flips), searched up to 10 % for the shown result's attack: "
            "FGSM one forward per probe, other attacks re-run per probe. Adds rows and the Dice-vs-ε area.")
        self.breaking_btn.setEnabled(False)
        self.sanity = SanityPanel(self.session)  # sanity checks of the shown result's model
        self._breaking: tuple | None = None  # (key of the result it was computed for, result dict)
        self._breaking_job = None
        self.match_title = QLabel("")
        self.match_title.setWordWrap(True)
        self.match_table = QTableWidget(0, 3)
        self.match_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.match_table.verticalHeader().setVisible(False)
        self.match_table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        for w in (self.match_title, self.match_table):
            w.setVisible(False)
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.match_title)
        lay.addWidget(self.match_table, 2)
        lay.addWidget(self.sanity)
        row = QHBoxLayout()
        row.addWidget(self.breaking_btn)
        row.addStretch(1)
        row.addWidget(self.copy_btn)
        lay.addLayout(row)
        self.header: list[str] = []
        self.rows: list[list[str]] = []
        self.match_header: list[str] = []
        self.match_rows: list[list[str]] = []
        self._add_callbacks()
        if self.session.shown is not None:
            self.update_from(self.session.shown)
        self.update_matched(self.session.matched)

    def _add_callbacks(self) -> None:
        self.session.result_changed.connect(self.update_from)
        self.session.metrics_changed.connect(self.update_from)
        self.session.frame.connect(self.update_from)
        self.session.matched_changed.connect(self.update_matched)
        self.session.transfer_model_changed.connect(self._model_b_changed)
        self.copy_btn.clicked.connect(self.copy_csv)
        self.breaking_btn.clicked.connect(lambda: self.compute_breaking())

    def compute_breaking(self):
        """Breaking ε for the shown result (a worker with Cancel in the activity panel); the rows
        appear when it is done and stay while that result (case, model, attack, parameters) is shown."""
        from .workers import Job

        shown = self.session.shown
        if shown is None or "eps" not in shown.outcome.params or self._busy_breaking():
            return None
        o = shown.outcome
        key = _breaking_key(shown)
        params = {k: v for k, v in o.params.items() if k not in ("eps", "seed", "data_range", "activation")}

        def done(result):
            self._breaking = (key, result)
            if self.session.shown is not None:
                self.update_from(self.session.shown)

        self.breaking_btn.setEnabled(False)
        self._breaking_job = Job(breaking_job, shown.source.image, o.model, o.attack, params, o.labels, shown.roi,
                                 o.seed, desc=f"breaking ε ({o.attack}) on {shown.source.case}", total=1,
                                 hooks=True, on_done=done,
                                 on_finish=lambda: self.breaking_btn.setEnabled(self.session.shown is not None)).start()
        return self._breaking_job

    def _busy_breaking(self) -> bool:
        return self._breaking_job is not None and self._breaking_job.running

    def closeEvent(self, event) -> None:
        if self._busy_breaking():
            self._breaking_job.cancel()
        self.sanity.cancel()
        self.session.transfer_model_changed.disconnect(self._model_b_changed)
        self.session.result_changed.disconnect(self.update_from)
        self.session.metrics_changed.disconnect(self.update_from)
        self.session.frame.disconnect(self.update_from)
        self.session.matched_changed.disconnect(self.update_matched)
        super().closeEvent(event)

    def _model_b_changed(self, _model) -> None:
        self.sanity.update_from(self.session.shown)  # model B is the sanity checks' transfer source

    def update_matched(self, matched) -> None:
        """The attack and the matched artifact side by side (hidden when there is no match)."""
        on = matched is not None
        for w in (self.match_title, self.match_table):
            w.setVisible(on)
        if not on:
            self.match_header, self.match_rows = [], []
            return
        self.match_title.setText(f"<b>Matched quality</b> · {matched.summary()}")
        self.match_header, self.match_rows = comparison_rows(matched)
        _fill(self.match_table, self.match_header, self.match_rows)

    def update_from(self, shown: Shown) -> None:
        o = shown.outcome
        where = ("live ε" if "eps" in o.params else "live") if shown.live else "run"
        if "iterate" in o.result.extra:  # a running attack's current iterate
            ex = o.result.extra
            where = f"running: {ex.get('unit', 'iterate')} {ex['iterate']} of {ex['n_steps']}"
            if ex.get("preview"):
                where = "preview: the latest result scaled to this ε, before any step"
        severity = (float(o.result.extra.get("severity", o.params.get("severity", 0.0)))
                    if is_artifact(o.attack) else None)
        self.title.setText(f"<b>{shown.source.case}</b> · {o.attack} · {knob_text(o)} · "
                           f"{o.model.spec} ({where})"
                           + (f" · evaluated also on B = {shown.transfer.model.spec}" if shown.transfer else "")
                           + ("" if shown.live else f" · {o.seconds:.1f} s"))
        if not o.metrics:
            self.title.setText(self.title.text() + " · updating readouts …")
            return
        self.header, self.rows = readout_rows(o.metrics, shown.transfer.metrics if shown.transfer else None,
                                              severity=severity)
        if self._breaking is not None and self._breaking[0] == _breaking_key(shown):
            self.rows += breaking_rows(self._breaking[1], len(self.header) - 1)
        self.breaking_btn.setEnabled("eps" in o.params and not self._busy_breaking())
        _fill(self.table, self.header, self.rows)
        self.sanity.update_from(shown)
        self.copy_btn.setEnabled(True)

    def csv_text(self) -> str:
        """The readouts table; after a match, a blank line and the comparison table."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.header)
        w.writerows(self.rows)
        if self.match_rows:
            w.writerow([])
            w.writerow(self.match_header)
            w.writerows(self.match_rows)
        if self.sanity.csv_rows():
            w.writerow([])
            w.writerow(["sanity check", "result", "value", "message"])
            w.writerows(self.sanity.csv_rows())
        return buf.getvalue()

    def copy_csv(self) -> str:
        text = self.csv_text()
        QApplication.clipboard().setText(text)
        return text


def _fill(table: QTableWidget, header: list[str], rows: list[list[str]]) -> None:
    table.clear()
    table.setColumnCount(len(header))
    table.setRowCount(len(rows))
    table.setHorizontalHeaderLabels(header)
    table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            item = QTableWidgetItem(v)
            region = v[5:].split(" ")[0] if v.startswith("Dice ") else ""
            if j == 0 and region in REGION_HELP:
                item.setToolTip(REGION_HELP[region])
            table.setItem(i, j, item)
