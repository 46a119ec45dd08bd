"""Live ε for iterative attacks (i-FGSM, ti-FGSM, PGD: ``AttackSpec.warm_start``).

A slider move either shows a finished result for that ε from the cache (no model call) or first
previews it warm — the latest result or frame, its perturbation scaled to the new ε
(:func:`~napari_medadv.core.anytime.warm_start`) and projected by the attack onto the new ε-ball,
shown with its own prediction and readouts after one forward
(:meth:`~napari_medadv.core.anytime.AnytimeRun.preview`: the iterate the warm run's first step
would evaluate, without waiting for that step's backward) — and then settles on the cold run Run
would do (same seed), shown and cached when it ends: continued warm runs drift from the cold result
and can even undo the attack when ε goes down (``benchmarks/bench_warm_start.py``). Latest value
wins: a newer move asks the running job to stop after its current step. Once a run finishes, the ε
values of :data:`FILL_GRID` are computed in the background (cold runs with the dock's seed: the results
Run would give) until the cache holds them, and paused while the slider moves.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from napari_medadv.core.anytime import EpsCache, StartCache, warm_start

from ..results import show_outcome
from ..session import Session, Shown
from ..workers import Job, report_error
from .anytime import AnytimeDisplay, LiveRuns
from .jobs import attack_job, headline, preview_job

if TYPE_CHECKING:
    import napari
    from qtpy.QtWidgets import QCheckBox

    from .jobs import JobBar

#: ε values filled into the cache in the background after the first live result
FILL_GRID = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1)


class LiveIterative(LiveRuns):
    """Live ε for attacks with warm starts, behind the dock's "live ε" check box.

    ``attack()`` is the attack's registry name, ``params()`` its parameters (ε included),
    ``seed()`` the dock's seed, ``key()`` the layer choices, ``context()`` the (source, labels,
    roi, target) to run on."""

    def __init__(self, viewer: napari.Viewer, session: Session, toggle: QCheckBox, jobs: JobBar, *,
                 attack: Callable[[], str], params: Callable[[], dict], seed: Callable[[], int | None],
                 key: Callable[[], tuple], context: Callable[[], tuple], say: Callable[[str], None]):
        self.viewer, self.session, self.toggle, self.jobs = viewer, session, toggle, jobs
        self._attack, self._params, self._seed, self._key, self._context = attack, params, seed, key, context
        self._say = say
        self.cache = EpsCache()
        self._starts = StartCache()  # the clean side of the runs under the current key: one start per key
        self._job: Job | None = None
        self._stop: threading.Event | None = None
        self._display: AnytimeDisplay | None = None
        self._pending: float | None = None  # a move waiting for the running job to stop
        self._settle: float | None = None  # ε whose cold (final) run follows its preview
        self._source: tuple | None = None  # (key, Source) of the latest run
        self._last: tuple | None = None  # (key, ε, adversarial image): where the next warm start begins
        self._clean: tuple | None = None  # (inputs key, the model's output on the clean image): one forward less per move
        self._t0: float | None = None
        self.last_latency: float | None = None  # slider move -> first frame or cached result on screen
        self.last_from_cache = False
        self.filling = False
        self._halted = False  # cancelled (or the dock closed): nothing starts until the next move
        session.frame.connect(self._on_frame)

    def shutdown(self) -> None:
        self.cancel()
        self.session.frame.disconnect(self._on_frame)


    # ------------------------------------------------------------------ keys
    def full_key(self) -> tuple:
        """What a cached result depends on besides ε: inputs, model, attack and its parameters, seed."""
        params = tuple(sorted((k, repr(v)) for k, v in self._params().items() if k != "eps"))
        return (*self._key(), id(self.session.model), self._attack(), params, self._seed())

    def cache_text(self) -> str:
        return f"cache: {len(self.cache)} ε, {self.cache.nbytes / 2**20:.0f} MB"

    # ------------------------------------------------------------------ slider
    def submit(self) -> None:
        """The (debounced) slider moved: a cached result, or a warm run (latest value wins)."""
        if not self.toggle.isChecked() or self.session.model is None:
            return
        self._halted = False
        self._settle = None
        eps = float(self._params()["eps"])
        key = self.full_key()
        self.cache.use(key)
        self._t0 = time.perf_counter()
        hit = self.cache.get(key, eps)
        if hit is not None:
            self._pending = None
            self._stop_running()
            # the source the cached runs were made on (same key: same layers): not the dock's whole
            # context again, which copies the ground truth and region onto the grid
            src = self._source[1] if self._source is not None and self._source[0] == key else None
            self._show_result(hit, cached=True, source=src)
            return
        self._pending = eps
        if self.busy:
            self._stop_running()  # it returns after its current step; _finished starts the next
            return
        self._start_next()

    def cancel(self) -> None:
        """Stop the running update and the background fill until the next slider move."""
        self._halted = True
        self._pending = self._settle = None
        self._stop_running()

    def invalidate(self, *_) -> None:
        """The image, ground truth or region changed (maybe in place): nothing cached holds."""
        self.cancel()
        self.cache.clear()
        self._starts.clear()
        self._last = self._clean = None


    def _start_next(self) -> None:
        if self._halted:
            return
        if self._pending is not None:
            eps, self._pending = self._pending, None
            self._run(eps, "preview")
        elif self._settle is not None:
            eps, self._settle = self._settle, None
            self._run(eps, "final")
        elif self.toggle.isChecked():
            self._fill_next()

    # ------------------------------------------------------------------ runs
    def _run(self, eps: float, mode: str) -> None:
        """``mode``: ``"preview"`` — the warm start from the latest result and its prediction, on
        screen after one forward (the quick answer to a move); ``"final"`` — the
        cold run Run would do at ``eps`` (same seed), shown and cached when it ends (its steps are
        shown only when there was nothing to warm-start from); ``"fill"`` — a cold run into the cache."""
        try:
            src, labels, roi, target = self._context()
            model = self.session.model
            key, ckey = self.full_key(), self._clean_key()
            if self._starts.key != (key, ckey) or self._starts.prepared is None:
                # a pass over the whole image: once per key (editing a picked layer clears the start: invalidate)
                model.check_image(src.image.array, src.case, src.image.channel_names)
        except Exception as e:
            report_error(e, "live ε")
            self.toggle.setChecked(False)
            return
        self._source = (key, src)
        params = {**self._params(), "eps": eps}
        init = None
        if mode == "preview":  # computed in the worker: three passes over the image (0.1 s at BraTS size)
            if self._last is not None and self._last[0] == key:
                init = functools.partial(warm_start, src.image.array, self._last[2], self._last[1], eps)
            elif (near := self.cache.nearest(key, eps)) is not None:
                init = functools.partial(warm_start, src.image.array, near.adversarial, float(near.result.eps), eps)
        shows = mode == "preview"
        if mode == "preview" and init is None:  # nothing to start from: the cold run, shown step by step
            mode = "final"
        seed = self._seed()
        clean = self._clean[1] if self._clean is not None and self._clean[0] == ckey else None
        self._stop = stop = threading.Event()
        self._display = display = AnytimeDisplay(self.viewer, self.session, self.jobs, src, roi) if shows else None
        self.filling = mode == "fill"
        name = self._attack()

        def on_step(payload):
            if display is not None and payload[1] is not None:
                display.show(payload[1])
                self._last = (key, eps, payload[1].adversarial)
                if mode == "preview":
                    self._say(f"live ε = {100 * eps:.1f} % on {src.case}: preview (the latest result scaled to "
                              f"{100 * eps:.1f} %) — computing the run at {100 * eps:.1f} % …")
            if mode == "preview" and display is not None and display.shown:
                stop.set()  # a frame is on screen: the cold run gives the settled result

        def on_done(res):
            outcome, _ = res
            self._clean = (ckey, outcome.clean_output)
            if display is not None:
                display.finish()
            if mode == "preview":
                self._last = (key, eps, outcome.adversarial)  # where the next warm start begins
                if not self._halted and self._pending is None:
                    self._settle = eps
            elif not outcome.result.cancelled:
                self.cache.put(key, eps, outcome)
                if mode == "final" and self._pending is None and not stop.is_set():
                    self._show_result(outcome, cached=False, source=src)

        def on_finish():
            if display is not None and not display.stopped:
                display.finish()  # failed: keep what is on screen consistent with the readouts
            self._job = None
            self._start_next()

        self._starts.use((key, ckey))  # the model input also depends on its channels and device
        if mode == "preview":  # the warm start itself and its prediction: one forward, no step
            job = (preview_job, src, model, name, params, labels, target, roi, seed, init, display.pacer, clean, stop,
                   self._starts)
        else:
            job = (attack_job, src, model, name, params, labels, target, roi, seed, None,
                   display.pacer if display is not None else None, init, clean, stop, None, self._starts)
        self._job = Job(*job, desc=f"live ε: {name} at {100 * eps:.1f} %", on_yield=on_step, on_done=on_done,
                        on_finish=on_finish, activity=False).start()

    def _clean_key(self) -> tuple:
        """What the clean image's output depends on: the layers, the model, its channels and device."""
        m = self.session.model
        return (*self._key(), id(m), repr(getattr(m, "channel_map", None)), str(getattr(m, "device", "")))

    def _on_frame(self, shown) -> None:
        """A frame of the current live run reached the screen: the latency of the slider move."""
        if self._t0 is not None and self._display is not None and not self._display.stopped:
            self.last_latency, self._t0 = time.perf_counter() - self._t0, None
            self.last_from_cache = False

    def _show_result(self, outcome, cached: bool, source=None) -> None:
        src = source if source is not None else self._context()[0]
        show_outcome(self.viewer, src, outcome, live=True)
        if self._t0 is not None:  # the layers are updated: as live FGSM's latency, before the docks redraw
            self.last_latency, self._t0 = time.perf_counter() - self._t0, None
            self.last_from_cache = cached
        self.session.set_shown(Shown(src, outcome, live=True))
        self._last = (self.full_key(), float(outcome.result.eps), outcome.adversarial)
        how = "from the cache" if cached else "done"
        self._say(f"live ε = {100 * outcome.result.eps:.1f} % on {src.case} ({how}) — {headline(outcome)} · "
                  f"{self.cache_text()}")

    def _fill_next(self) -> None:
        key = self.full_key()
        todo = [e for e in FILL_GRID if self.cache.get(key, e) is None]
        if self.session.model is None or not todo or self.cache.key != key:
            self.filling = False
            return
        self._run(todo[0], "fill")
