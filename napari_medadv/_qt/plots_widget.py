"""Plots dock (matplotlib, following napari's theme): Dice vs ε sweep (run in the background,
exportable as an animated GIF), Dice and PSNR vs iteration (live during i-FGSM/ti-FGSM/PGD),
L0 and the attacked class's probability vs iteration (live during DGDE: its Figs. 3-4)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medadv.core import metrics as M
from napari_medadv.core.live import LiveEps

from .compat import text_overlay
from .export import write_gif
from .layers import context_from_choices
from .results import show_outcome
from .session import Session
from .workers import Job, report_error
from .docking import scrolling, tab_on_first_show

if TYPE_CHECKING:
    import napari


def sweep_job(src, live, eps_values, with_outcomes: bool = False):
    """Generator for a worker: one forward per ε from FGSM's cached gradient sign.

    Yields ``(i, n, row)``; a row has ε, Dice per region (vs ground truth if given, else vs the
    clean prediction), mean PSNR and, for classifiers, the probabilities."""
    n = len(eps_values)
    rows = []
    for i, eps in enumerate(eps_values):
        o = live.outcome(float(eps), metrics=False)
        row = {"eps": float(eps)}
        if o.seg_adv is not None:
            ref = o.labels if o.labels is not None else o.seg_clean
            if o.model.info.brats_regions(int(o.clean_output.shape[1])):
                row["dice"] = M.dice_regions(o.seg_adv, ref)
            else:  # per label, named as the model names them, and the foreground
                info = o.model.info
                values = sorted((set(np.unique(ref).tolist()) | set(np.unique(o.seg_clean).tolist())) - {0})
                row["dice"] = {info.label_name(v): d for v, d in M.dice_per_label(o.seg_adv, ref, values).items()}
                row["dice"]["foreground"] = M.foreground_dice(o.seg_adv, ref)
            row["reference"] = "ground truth" if o.labels is not None else "clean prediction"
        else:
            names = o.model.info.class_names or [str(k) for k in range(len(o.probs_adv))]
            row["probabilities"] = dict(zip(names, (float(p) for p in o.probs_adv)))
        clean = o.image.array
        row["psnr"] = M.psnr_channels(clean, o.adversarial)  # as metrics.json
        rows.append(row)
        yield i + 1, n, (row, o if with_outcomes else None)
    return rows


class PlotsWidget(QWidget):
    """The Plots dock."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        tab_on_first_show(self, napari_viewer)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = napari_viewer
        self.session = Session.of(napari_viewer)
        self._job: Job | None = None
        self.sweep_rows: list[dict] = []
        self.history: list[dict] = []
        self.history_attack = ""
        self.last_gif_frames = 0

        self.figure = Figure(figsize=(4, 5), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(320)
        self.ax_sweep = self.figure.add_subplot(2, 1, 1)
        self.ax_iter = self.figure.add_subplot(2, 1, 2)
        self.ax_iter2 = None

        self.max_eps = QDoubleSpinBox()
        self.max_eps.setRange(0.5, 50.0)
        self.max_eps.setValue(10.0)
        self.max_eps.setSuffix(" %")
        self.max_eps.setToolTip("largest ε of the sweep (% of each channel's intensity range)")
        self.n_points = QSpinBox()
        self.n_points.setRange(3, 101)
        self.n_points.setValue(11)
        self.n_points.setToolTip("number of ε values (one forward pass each)")
        self.sweep_btn = QPushButton("Run ε sweep")
        self.sweep_btn.setToolTip("FGSM at each ε from one cached gradient sign: one forward per point")
        self.gif_btn = QPushButton("Export sweep GIF…")
        self.gif_btn.setToolTip("Animate the viewer over the sweep's ε values (for slides)")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        self.form = QWidget()  # scrolls inside the dock (docking.scrolling)
        lay = QVBoxLayout(self.form)
        lay.addWidget(self.canvas, 1)
        row = QHBoxLayout()
        row.addWidget(QLabel("ε up to"))
        row.addWidget(self.max_eps)
        row.addWidget(QLabel("points"))
        row.addWidget(self.n_points)
        lay.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.sweep_btn)
        row.addWidget(self.gif_btn)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        lay.addWidget(self.status)
        self.scroll = scrolling(self, self.form)
        self._add_callbacks()
        self._apply_theme()
        self._draw_sweep()
        self._draw_history()

    # ------------------------------------------------------------------ wiring / theme
    def _add_callbacks(self) -> None:
        self.session.step.connect(self._on_step)
        self.session.run_started.connect(self._on_run_started)
        self.session.result_changed.connect(self._on_result)
        self.sweep_btn.clicked.connect(lambda: self.run_sweep())
        self.gif_btn.clicked.connect(lambda: self.export_gif())
        self.cancel_btn.clicked.connect(self.cancel)
        self.viewer.events.theme.connect(self._theme_changed)

    def closeEvent(self, event) -> None:
        self.cancel()
        self.session.step.disconnect(self._on_step)
        self.session.run_started.disconnect(self._on_run_started)
        self.session.result_changed.disconnect(self._on_result)
        self.viewer.events.theme.disconnect(self._theme_changed)
        super().closeEvent(event)

    def _colors(self) -> dict:
        from napari.utils.theme import get_theme

        t = get_theme(self.viewer.theme)
        return {"bg": t.canvas.as_hex(), "panel": t.background.as_hex(), "fg": t.text.as_hex(),
                "grid": t.primary.as_hex()}

    def _apply_theme(self) -> None:
        c = self._colors()
        self.figure.set_facecolor(c["panel"])
        for ax in self.figure.axes:
            ax.set_facecolor(c["panel"])
            for spine in ax.spines.values():
                spine.set_color(c["fg"])
            ax.tick_params(colors=c["fg"], labelsize=8)
            ax.xaxis.label.set_color(c["fg"])
            ax.yaxis.label.set_color(c["fg"])
            ax.title.set_color(c["fg"])
            leg = ax.get_legend()
            if leg is not None:
                leg.get_frame().set_facecolor(c["panel"])
                leg.get_frame().set_edgecolor(c["grid"])
                for t in leg.get_texts():
                    t.set_color(c["fg"])

    def _theme_changed(self, event=None) -> None:
        self._draw_sweep()
        self._draw_history()

    # ------------------------------------------------------------------ sweep
    def eps_values(self) -> np.ndarray:
        return np.linspace(0.0, self.max_eps.value() / 100.0, self.n_points.value())

    def _prepare(self, with_outcomes: bool):
        if self.session.model is None:
            raise ValueError("load a model first (Model dock)")
        src, labels, roi, _ = context_from_choices(self.viewer, self.session.choices)
        self.session.model.check_image(src.image.array, src.case, src.image.channel_names)
        return src, labels, roi

    def run_sweep(self, *, with_outcomes: bool = False, on_frame=None, on_complete=None) -> Job | None:
        """Dice (or probabilities) and PSNR vs ε, FGSM from one cached gradient sign."""
        if self._job is not None and self._job.running:
            report_error(ValueError("a sweep is already running"), "ε sweep")
            return None
        try:
            src, labels, roi = self._prepare(with_outcomes)
        except Exception as e:
            report_error(e, "ε sweep")
            return None
        model = self.session.model
        eps_values = self.eps_values()
        self.sweep_rows = []
        self._set_busy(True)
        self.status.setText(f"ε sweep on {src.case}: gradient sign, then {len(eps_values)} forward passes …")

        def job():
            yield 0, len(eps_values) + 1, None
            live = LiveEps(src.image, model, labels=labels, roi=roi)
            rows = []
            for done, total, payload in sweep_job(src, live, eps_values, with_outcomes):
                rows.append(payload[0])
                yield done + 1, total + 1, payload
            return rows

        def on_yield(payload):
            if payload is None:
                return
            row, outcome = payload
            self.sweep_rows.append(row)
            self._draw_sweep()
            if on_frame is not None and outcome is not None:
                on_frame(src, row, outcome)

        def done(rows):
            self.session.sweep = {"case": src.case, "model": model.spec, "rows": rows}
            self.session.sweep_changed.emit(self.session.sweep)
            self.status.setText(f"ε sweep on {src.case} ({model.spec}): {len(rows)} points")
            if on_complete is not None:
                on_complete(src, rows)

        self._job = Job(job, desc=f"ε sweep on {src.case}", total=len(eps_values) + 1, on_yield=on_yield,
                        on_done=done, on_finish=lambda: self._set_busy(False),
                        on_cancel=lambda: self.status.setText("ε sweep cancelled")).start()
        return self._job

    def export_gif(self, path: str | None = None) -> Job | None:
        """Run the sweep, putting each ε on the layers and grabbing the canvas; write a GIF."""
        from napari.utils.notifications import show_info

        if path is None:
            path = QFileDialog.getSaveFileName(self, "Export the ε sweep as GIF", "eps-sweep.gif", "GIF (*.gif)")[0]
            if not path:
                return None
        frames: list[np.ndarray] = []
        overlay = text_overlay(self.viewer)
        was_visible, old_text = overlay.visible, overlay.text

        def frame(src, row, outcome):
            show_outcome(self.viewer, src, outcome, live=True)
            overlay.visible = True
            label = f"FGSM  ε = {100 * row['eps']:.1f} % of range"
            if "dice" in row:
                label += "   Dice " + " ".join(f"{k} {v:.2f}" for k, v in row["dice"].items())
            overlay.text = label
            frames.append(self.viewer.screenshot(canvas_only=True, flash=False))

        def complete(src, rows):
            overlay.visible, overlay.text = was_visible, old_text
            write_gif(frames, path)
            self.last_gif_frames = len(frames)
            show_info(f"wrote {path} ({len(frames)} frames)")
            self.status.setText(f"GIF: {path}")

        job = self.run_sweep(with_outcomes=True, on_frame=frame, on_complete=complete)
        if job is not None:
            job.worker.finished.connect(lambda: (setattr(overlay, "visible", was_visible),
                                                 setattr(overlay, "text", old_text)))
        return job

    def cancel(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()

    def _set_busy(self, busy: bool) -> None:
        self.sweep_btn.setEnabled(not busy)
        self.gif_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    def _draw_sweep(self) -> None:
        ax = self.ax_sweep
        ax.clear()
        rows = self.sweep_rows
        c = self._colors()
        if rows:
            x = [100 * r["eps"] for r in rows]
            if "dice" in rows[0]:
                for k in rows[0]["dice"]:
                    ax.plot(x, [r["dice"][k] for r in rows], marker="o", ms=3, label=k)
                ax.set_ylabel(f"Dice vs {rows[0]['reference']}", fontsize=8)
            else:
                for k in rows[0]["probabilities"]:
                    ax.plot(x, [r["probabilities"][k] for r in rows], marker="o", ms=3, label=f"P({k})")
                ax.axhline(0.5, color=c["fg"], lw=0.6, ls="--")
                ax.set_ylabel("probability", fontsize=8)
            ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "Run ε sweep: Dice vs ε", ha="center", va="center", transform=ax.transAxes,
                    color=c["fg"], fontsize=9)
        ax.set_xlabel("ε (% of intensity range)", fontsize=8)
        ax.set_title("FGSM ε sweep", fontsize=9)
        self._apply_theme()
        self.canvas.draw_idle()

    # ------------------------------------------------------------------ per-iteration plots
    def _on_run_started(self, name: str) -> None:
        self.history = []
        self.history_attack = name
        self._last_draw = 0.0
        self._draw_history()

    def _on_step(self, name: str, record: dict) -> None:
        self.history_attack = name
        self.history.append(record)
        now = time.perf_counter()
        if now - getattr(self, "_last_draw", 0.0) > 0.1:  # redraw at most 10×/s: never stall Qt
            self._last_draw = now
            self._draw_history(relayout=False)

    def _on_result(self, shown) -> None:
        if shown.history:  # a run's result, or DGDE's live search (its trajectory up to the shown solution)
            self.history = list(shown.history)
            self.history_attack = shown.outcome.attack
            self._draw_history()

    def _draw_history(self, relayout: bool = True) -> None:
        """``relayout=False`` (each step of a running attack) keeps the axes where the last layout
        put them: matplotlib's constrained layout is most of a redraw (190 of 290 ms on 2 cores),
        which the Qt thread would otherwise pay at every step."""
        self.figure.set_layout_engine("constrained" if relayout else "none")
        ax = self.ax_iter
        if self.ax_iter2 is not None:
            self.ax_iter2.remove()
            self.ax_iter2 = None
        ax.clear()
        c = self._colors()
        h = self.history
        if h and any("l0" in r for r in h):
            l0 = [r["l0"] for r in h if "l0" in r]
            ax.plot([r["step"] for r in h if "l0" in r], l0, marker=".", color="tab:red")
            if min(l0) > 0:  # an attack that changed nothing has L0 = 0: no log scale then
                ax.set_yscale("log")
            ax.set_ylabel("perturbed pixels (L0)", fontsize=8)
            ax.set_xlabel("model queries", fontsize=8)
            ax.set_title(f"{self.history_attack}: L0 (red) and attacked-class probability (cyan)", fontsize=9)
            prob = [(r["step"], r["probability"]) for r in h if "l0" in r and r.get("probability") is not None]
            if prob:  # DGDE's Fig. 4 next to its Fig. 3: the probability stays on the far side of 0.5
                self.ax_iter2 = ax.twinx()
                self.ax_iter2.plot(*zip(*prob), marker=".", color="tab:cyan")
                self.ax_iter2.axhline(0.5, color="tab:cyan", ls="--", lw=0.8)
                self.ax_iter2.set_ylim(-0.02, 1.02)
                self.ax_iter2.set_ylabel("probability (segmentation: Dice)", fontsize=8, color="tab:cyan")
                self.ax_iter2.tick_params(colors=c["fg"], labelsize=8)
        elif h and any("dice" in r or "psnr" in r for r in h):
            steps = [r["step"] for r in h]
            if any("dice" in r for r in h):
                ax.plot(steps, [r.get("dice", np.nan) for r in h], marker=".", color="tab:orange", label="Dice")
                ax.set_ylabel("Dice vs reference", fontsize=8)
                ax.set_ylim(-0.02, 1.02)
            if any("psnr" in r for r in h):
                self.ax_iter2 = ax.twinx()
                self.ax_iter2.plot(steps, [r.get("psnr", np.nan) for r in h], marker=".", color="tab:cyan")
                self.ax_iter2.set_ylabel("PSNR (dB)", fontsize=8, color="tab:cyan")
                self.ax_iter2.tick_params(colors=c["fg"], labelsize=8)
                for spine in self.ax_iter2.spines.values():
                    spine.set_color(c["fg"])
            ax.set_xlabel("iteration", fontsize=8)
            ax.set_title(f"{self.history_attack}: Dice (orange) and PSNR (cyan) vs iteration", fontsize=9)
        else:
            msg = ("Dice/PSNR vs iteration appear while i-FGSM, ti-FGSM or PGD run;\n"
                   "L0 vs iteration while DGDE runs")
            ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, color=c["fg"], fontsize=8)
        self._apply_theme()
        self.canvas.draw_idle()
