"""The Attack dock's jobs: the worker-side generators (an attack, saving a result), the
Run / Cancel / Save row with the progress bar and the status line that drive one job at a time,
and the one-line headline of a result for the status line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from napari.utils import notifications
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton

from napari_medadv.core.anytime import AnytimeRun, FramePacer, StartCache
from napari_medadv.core.pipeline import transfer_outcome, write_outcome

from ..export import save_screenshot
from ..progress import ProgressBar
from ..results import prepare_display, source_ranges
from ..workers import Job, report_error

if TYPE_CHECKING:
    import napari

    from ..layers import Source
    from ..session import Shown


# ----------------------------------------------------------------------------- jobs (worker side)


def attack_job(source: Source, model, name: str, params: dict, labels, target, roi, seed, model_b,
               pacer: FramePacer | None = None, init=None, clean_output=None, stop=None, vulnerability=None,
               starts: StartCache | None = None):
    """Generator for a napari worker: ``(done, total, (history record, frame or None))`` per step,
    a frame (the iterate the step evaluated, its prediction and readouts but SSIM) when ``pacer``
    says one is due; returns ``(outcome, transfer outcome or None)``. ``init``/``clean_output``:
    a warm start and the clean output for live ε (:class:`~napari_medadv.core.anytime.AnytimeRun`);
    ``stop`` (a ``threading.Event``): once set, the attack stops after its current step and returns
    what it has (``result.cancelled``) — live ε moving on to a newer ε. ``vulnerability``: the top-k %
    region and/or the vulnerability map (:class:`~napari_medadv.core.vulnerability.VulnerabilityOptions`).
    ``starts``: live ε's kept clean side of these settings (:class:`~napari_medadv.core.anytime.StartCache`)."""
    source_ranges(source)  # once per source, here rather than on the Qt thread at the first result
    run = AnytimeRun(source.image, model, name, params=params, labels=labels, target=target, roi=roi, seed=seed,
                     init=init, clean_output=clean_output, vulnerability=vulnerability, starts=starts)
    gen = run.steps()
    try:
        step = next(gen)
        while True:
            record = {"step": step.step, "loss": step.loss, **step.metrics}
            frame = None
            if pacer is not None and pacer.due():
                frame = pacer.build(lambda: _frame_with_readouts(run, step))
            yield step.step, step.n_steps, (record, frame)
            step = gen.send(True if stop is not None and stop.is_set() else None)
    except StopIteration:
        pass
    finally:
        gen.close()
    outcome = prepare_display(run.outcome)
    transfer = transfer_outcome(outcome, model_b) if model_b is not None else None
    return outcome, transfer


def preview_job(source: Source, model, name: str, params: dict, labels, target, roi, seed, init, pacer: FramePacer,
                clean_output=None, stop=None, starts: StartCache | None = None):
    """Generator for a napari worker: live ε's first answer to a slider move — the warm start
    ``init`` projected onto the new ε-ball, its prediction and readouts (one forward,
    :meth:`~napari_medadv.core.anytime.AnytimeRun.preview`), yielded as ``attack_job`` yields a
    frame. The job then lasts until that frame is on screen (``pacer.want`` set again) or ``stop``
    is set, as a run stopped after its first frame does; returns ``(frame, None)``. ``init`` may be a
    callable that computes the warm start (in this worker, not on the Qt thread)."""
    init = init() if callable(init) else init  # live ε hands over the warm start to compute here
    source_ranges(source)
    run = AnytimeRun(source.image, model, name, params=params, labels=labels, target=target, roi=roi, seed=seed,
                     init=init, clean_output=clean_output, starts=starts)
    frame = pacer.build(lambda: _with_readouts(run, run.preview()))
    yield 1, 1, ({"step": 0, "loss": None}, frame)
    while not pacer.want.wait(0.02):
        if stop is not None and stop.is_set():
            break
    return frame, None


def _with_readouts(run: AnytimeRun, frame):
    run.readouts.readouts(frame)
    return frame


def _frame_with_readouts(run: AnytimeRun, step):
    frame = run.frame(step)
    return frame if frame is None else _with_readouts(run, frame)


def save_job(outcome, folder: str, extra: dict):
    yield 0, 1, None
    return write_outcome(outcome, folder, record_extra=extra, command=["napari", "napari-medadv", "Save attack"])


def expected_steps(spec, params: dict) -> int:
    """How many progress steps a run of ``spec`` with ``params`` reports (the bar's maximum)."""
    if spec.gradient_free and "max_queries" in params:
        return int(params["max_queries"])
    steps = int(params.get("steps", 1))
    return steps * int(params.get("restarts", 1))


# ----------------------------------------------------------------------------- the run row

#: layer updates one event-loop turn may run before it hands the loop back: the turn then repaints the
#: canvas (40-60 ms under Xvfb's software OpenGL) and the stall goal is 100 ms
TURN_BUDGET_S = 0.015


class JobBar:
    """Run / Cancel / Save attack…, the progress bar and the status line, and the dock's one job
    at a time that they drive (an attack, a match or a save).

    A finished job's layers go on screen a few per event-loop turn (:meth:`apply_gradually`)."""

    def __init__(self):
        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.progress = ProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setValue(0)
        self.status = QLabel("load a model (Model dock), pick an image, press Run")
        self.status.setWordWrap(True)
        self.save_btn = QPushButton("Save attack…")
        self.save_btn.setToolTip("Write the result folder (as `medadv attack`) plus a screenshot")
        self.save_btn.setEnabled(False)
        self.buttons = QHBoxLayout()
        self.buttons.addWidget(self.run_btn)
        self.buttons.addWidget(self.cancel_btn)
        self.buttons.addWidget(self.save_btn)
        self.job: Job | None = None
        self._applying = 0
        self._update_cost: dict[str, float] = {}  # layer name -> seconds its last update took
        self._next_update: dict[str, str] = {}  # layer name -> the layer updated after it last time

    @property
    def busy(self) -> bool:
        """A job (attack, match or save) is running."""
        return self.job is not None and self.job.running

    @property
    def applying(self) -> bool:
        """A finished job's layers are still going on screen."""
        return bool(self._applying)

    def say(self, text: str) -> None:
        self.status.setText(text)

    def begin(self, total: int, text: str) -> None:
        """A job starts: progress 0 of ``total``, ``text`` in the status line, Cancel instead of Run."""
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.status.setText(text)
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)

    def end(self) -> None:
        """The job finished (done, failed or cancelled): Run again, no Cancel."""
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()

    def apply_gradually(self, steps, then, failed=None) -> None:
        """Run a layer-update generator over as few event-loop turns as keeps each turn short
        (:data:`TURN_BUDGET_S`), then ``then()`` (``failed()`` instead when a layer could not be
        updated). Each turn ends in a repaint of the canvas (tens of ms under software OpenGL):
        updates that fit in one turn share it, and one that takes longer (creating a layer, a
        BraTS-size plane) gets a turn of its own, so the event loop never waits for a whole result."""
        self._applying += 1
        cost, following = self._update_cost, self._next_update

        def step(prev: str | None) -> str:
            t = time.perf_counter()
            name = next(steps)
            cost[name] = time.perf_counter() - t
            if prev is not None:
                following[prev] = name
            return name

        def tick(prev: str | None = None):
            t0 = time.perf_counter()
            try:
                name = step(prev)
                # start the next update only if it fits the turn too: results repeat the same layers
                # in the same order, so the one that followed this layer last time predicts its cost
                while (time.perf_counter() - t0 + cost.get(following.get(name), cost[name])) < TURN_BUDGET_S:
                    name = step(name)
            except StopIteration:
                self._applying -= 1
                then()
            except Exception as e:  # a layer could not be updated (e.g. removed meanwhile)
                self._applying -= 1
                report_error(e, "showing the result")
                if failed is not None:
                    failed()
            else:
                # a 1 ms timer, not 0: a zero-delay call is a posted event, and Qt runs a chain of
                # them back to back before due timers and input (the loop would not get its turn)
                QTimer.singleShot(1, lambda: tick(name))

        tick()

    def start_save(self, viewer: napari.Viewer, shown: Shown, folder: str) -> Job:
        """Write the result folder of ``shown`` (same as `medadv attack`) + screenshot.png, in a worker."""
        if not shown.outcome.metrics:
            shown.outcome.metrics = {}
        extra = {"gui": {"live": shown.live, "source_layers": shown.source.channel_layers,
                         "model_b": shown.transfer.model.spec if shown.transfer is not None else None}}
        if shown.transfer is not None:
            extra["transfer_metrics"] = shown.transfer.metrics

        def done(written):
            shot = Path(folder) / "screenshot.png"
            try:
                save_screenshot(viewer, shot)
            except OSError as e:
                notifications.show_error(f"screenshot not written: {e}")
            notifications.show_info(f"saved the attack to {folder} ({len(written) + 1} files)")
            self.status.setText(f"saved to {folder}")

        self.job = Job(save_job, shown.outcome, folder, extra, desc="saving the attack", total=1,
                       on_done=done).start()
        return self.job


# ----------------------------------------------------------------------------- status line


def _named_per_label(block: dict) -> dict:
    """Per-label Dice under the model's label names, and the foreground when there are several."""
    names = block.get("label_names") or {}
    out = {names.get(k, f"label {k}"): v for k, v in (block.get("per_label") or {}).items()}
    if len(out) != 1:
        out["foreground"] = block["foreground"]
    return out


def headline(o) -> str:
    """The result in one line: Dice per region (or label) for a segmentation, probabilities
    clean → adversarial for a classifier."""
    m = o.metrics or {}
    if "dice" in m:
        block = m["dice"].get("ground_truth_vs_adversarial") or m["dice"]["clean_vs_adversarial"]
        ref = "vs ground truth" if "ground_truth_vs_adversarial" in m["dice"] else "vs clean"
        regs = block.get("regions") or _named_per_label(block)
        return "Dice " + ref + ": " + ", ".join(f"{k} {v:.3f}" for k, v in regs.items())
    if "probabilities" in m:
        return ", ".join(f"{k} {v['clean']:.2f}→{v['adversarial']:.2f}" for k, v in m["probabilities"].items())
    return ""
