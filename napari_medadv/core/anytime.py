"""Iterative attacks shown while they run, and live ε for them (the Attack dock, ``medadv demo --warm``).

* :class:`AnytimeRun` runs an attack (:func:`~.pipeline.iter_attack`) and turns any of its steps
  into an :class:`~.outcome.AttackOutcome` for display at no extra model call: a gradient step
  already ran the model on the iterate before its update (``AttackStep.evaluated`` / ``output``),
  so that iterate and its prediction are shown together — one step behind the newest iterate,
  never an image with another image's segmentation. The readouts of such a frame come from
  :class:`~.live.OutcomeReadouts` (bincount Dice, one pass for the image quality; SSIM after).
* :func:`warm_start` is where live ε continues from when the slider moves: the nearest finished
  result's perturbation scaled to the new budget (then projected by the attack onto the new
  ε-ball, the region and the valid range).
* :class:`SearchRun` keeps a gradient-free attack's search (DGDE) between runs: a larger query
  budget or a lower pixel target continues it from its current solution, a smaller one is answered
  from the solutions it already found.
* :class:`EpsCache` keeps finished results per ε, memory-bounded, least recently used out, under
  a key of everything else that determines them; scrubbing over cached ε values costs no model call.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from .attacks import AttackResult, AttackStep
from .io import ImageData
from .live import OutcomeReadouts
from .models.base import LoadedModel
from .outcome import AttackOutcome
from .pipeline import StartedAttack, finish_outcome, iter_attack, start_attack
from .vulnerability import VulnerabilityOptions

#: default memory bound of an :class:`EpsCache` (adversarial images and label maps)
CACHE_BYTES = 2 * 2**30


def warm_start(image: np.ndarray, previous: np.ndarray, eps_previous: float, eps: float) -> np.ndarray:
    """The start of a live-ε run at ``eps`` from a finished result at ``eps_previous``: the clean
    image plus the previous perturbation × ``eps / eps_previous``.

    Why scaling: the L∞ attacks here end with most voxels at ±ε (sign steps, then projection),
    so scaling maps the old ε-ball's corners onto the new one's and keeps the direction the
    attack found; clipping the old perturbation instead would leave it at the old, smaller
    budget when ε grows. The attack then projects this start onto the new ε-ball, its region and
    the valid intensity range (:meth:`~.attacks.Attack.iterate`), so the start is always feasible.
    """
    image = np.asarray(image, dtype=np.float32)
    if not eps_previous > 0:
        return image.copy()
    delta = np.asarray(previous, dtype=np.float32) - image
    return image + delta * np.float32(eps / eps_previous)


@dataclass(frozen=True)
class Prepared:
    """The clean side of a run: its start (region, model input, clean output, labels, target) and
    the clean half of its readouts — the same for every ε of one image, model and attack setting."""

    started: StartedAttack
    readouts: OutcomeReadouts
    seg_clean: np.ndarray | None


class StartCache:
    """What live ε keeps between runs that differ only in ε: the :class:`Prepared` clean side of
    the first, under the caller's key (image, model, attack and its other parameters, labels,
    region, target, seed) — the next run at another ε skips the region, input checks, label
    conversion and clean label map (measured: 40 ms on the phantoms, about 0.5 s at BraTS size).
    ``use(key)`` before each run; a different key drops it. Runs using one cache must not overlap."""

    def __init__(self):
        self.key: Hashable | None = None
        self.prepared: Prepared | None = None

    def use(self, key: Hashable) -> None:
        if key != self.key:
            self.key, self.prepared = key, None

    def clear(self) -> None:
        self.key = self.prepared = None


class AnytimeRun:
    """One attack run whose steps can be shown as it goes.

    ``run.steps()`` is the generator of :class:`AttackStep` (``send(True)`` stops it); once it is
    exhausted ``run.outcome`` holds the final :class:`AttackOutcome`. ``run.frame(step)`` is the
    outcome of the iterate that ``step`` evaluated (``None`` for steps without a model output,
    e.g. DGDE's generations), with ``metrics`` left empty for :attr:`readouts` to fill.
    """

    def __init__(self, image: ImageData, model: LoadedModel, attack: str, *, params: dict | None = None,
                 labels: np.ndarray | None = None, target=None, roi="auto", seed: int = 0,
                 init: np.ndarray | None = None, clean_output=None, vulnerability: VulnerabilityOptions | None = None,
                 starts: StartCache | None = None):
        self.image, self.model, self.attack = image, model, attack
        self.vulnerability = vulnerability
        self.starts = starts
        self.params = dict(params or {})
        self.labels = None if labels is None else np.asarray(labels)
        self.target, self.roi, self.seed, self.init = target, roi, int(seed), init
        self.clean_output = clean_output
        self.started: StartedAttack | None = None
        self.outcome: AttackOutcome | None = None
        self.readouts: OutcomeReadouts | None = None
        self._seg_clean = None
        self._eps_native = None

    def _on_start(self, started: StartedAttack) -> None:
        self.started = started
        self.clean_output = started.clean_output
        kept = self.starts.prepared if self.starts is not None else None
        if kept is not None:
            self._seg_clean, self.readouts = kept.seg_clean, kept.readouts
            return
        if self.model.info.task == "segmentation":
            self._seg_clean = self.model.to_label_map(started.clean_output)[0]
        self.readouts = OutcomeReadouts(self.image, self.model, self.labels, started.roi, self._seg_clean)
        if self.starts is not None and self._reusable:
            self.starts.prepared = Prepared(started, self.readouts, self._seg_clean)

    @property
    def _reusable(self) -> bool:
        """A top-k % region is chosen at ε: such a start is not kept."""
        return self.vulnerability is None or self.vulnerability.top_percent is None

    def _kept_start(self) -> StartedAttack | None:
        """The start a :class:`StartCache` keeps for these settings, at this run's ε."""
        kept = self.starts.prepared if self.starts is not None and self._reusable else None
        return None if kept is None else kept.started.at_eps(float(self.params.get("eps", kept.started.attack.eps)))

    def steps(self):
        gen = iter_attack(self.image, self.model, self.attack, params=self.params, labels=self.labels,
                          target=self.target, roi=self.roi, seed=self.seed, init=self.init,
                          clean_output=self.clean_output, on_start=self._on_start, vulnerability=self.vulnerability,
                          started=self._kept_start())
        try:
            step = next(gen)
            while True:
                stop = yield step
                step = gen.send(True if stop else None)
        except StopIteration as done:
            self.outcome = done.value
        finally:
            gen.close()

    def preview(self) -> AttackOutcome:
        """The warm start's own frame, before any step: ``init`` projected by the attack onto its
        ε-ball, region and valid range (:meth:`~.attacks.Attack.project_start`) — the iterate
        :meth:`steps` would begin from — with the model's prediction there. One forward and no
        backward: the first frame live ε shows after a slider move is the one the run's first
        step would have shown after its forward *and* backward."""
        import torch

        if self.init is None:
            raise ValueError("a preview needs a warm start (init)")
        s = self._kept_start() or start_attack(self.image, self.model, self.attack, params=self.params,
                                               labels=self.labels, target=self.target, roi=self.roi, seed=self.seed,
                                               clean_output=self.clean_output)
        self._on_start(s)
        start = s.attack.project_start(s.x, self.model.to_batch(np.asarray(self.init, dtype=np.float32)))
        with torch.no_grad():
            output = self.model.forward(start)
        n_steps = int(getattr(s.attack, "steps", 1)) * int(getattr(s.attack, "restarts", 1))
        frame = self.frame(AttackStep(1, n_steps, None, start, {}, evaluated=start, output=output))
        frame.result.extra["preview"] = True  # what the front ends call it: a warm start, no step taken
        return frame

    def frame(self, step: AttackStep) -> AttackOutcome | None:
        """The outcome of the iterate ``step`` evaluated (its image, the model's output there).

        Gradient-free attacks (DGDE) report their best candidate without its output: its frame
        costs one forward pass (a :class:`FramePacer` bounds how often)."""
        if self.started is None:
            return None
        s, model = self.started, self.model
        atk = s.attack
        evaluated, output, iterate, unit = step.evaluated, step.output, step.step - 1, "iterate"
        if evaluated is None or output is None:
            if not atk.gradient_free:
                return None
            import torch

            evaluated, iterate, unit = step.adversarial, step.step, "queries"
            with torch.no_grad():
                output = model.forward(evaluated)
        if self._eps_native is None:
            from .intensity import compute_range

            self._eps_native = compute_range(s.x, atk.data_range).eps_native_per_channel(atk.eps)
        adv = evaluated[0].detach().cpu().numpy()
        # a gradient step evaluated iterate step-1 (0 = the start): say which one this is
        result = AttackResult(attack=self.attack, clean=s.x, adversarial=evaluated, eps=float(atk.eps),
                              eps_native=self._eps_native, params=atk.get_params(),
                              extra={"iterate": iterate, "n_steps": step.n_steps, "unit": unit,
                                     "step_metrics": dict(step.metrics)})
        o = AttackOutcome(image=self.image, model=model, attack=self.attack, params=result.params, seed=self.seed,
                          adversarial=adv.astype(np.float32, copy=False), result=result,
                          clean_output=s.clean_output, adv_output=output, labels=self.labels,
                          channel_mapping=s.mapping, difference_sums=step.sums if evaluated is step.evaluated else None)
        if model.info.task == "segmentation":
            o.seg_clean = self._seg_clean
            o.seg_adv = model.to_label_map(output)[0]
        else:
            o.probs_clean = model.probabilities(s.clean_output)[0].cpu().numpy()
            o.probs_adv = model.probabilities(output)[0].cpu().numpy()
        return o


class SearchRun(AnytimeRun):
    """A gradient-free attack's search on one image kept between runs (``AttackSpec.live_search``:
    DGDE's query budget and maximum pixels, the Attack dock's live controls).

    ``steps(max_queries, max_pixels)`` continues the search (:meth:`DGDE.open_search
    <napari_medadv.core.attacks.dgde.DGDE.open_search>`) from where it stopped — its solution,
    population, step rate and random state — yielding an :class:`AttackStep` per new solution
    (frames: :meth:`AnytimeRun.frame`). :meth:`outcome_at` is what a cold run with those settings
    ends at (equal to it: tested), ``None`` while the search has not got that far. ``params``
    are the attack's other parameters; a change of any of them needs a new :class:`SearchRun`.
    """

    def __init__(self, image: ImageData, model: LoadedModel, attack: str, *, params: dict | None = None,
                 labels: np.ndarray | None = None, target=None, roi="auto", seed: int = 0, clean_output=None):
        from .attacks import ATTACKS

        spec = ATTACKS.get_spec(attack)
        if not spec.live_search:
            raise ValueError(f"{spec.label} keeps no search to continue")
        super().__init__(image, model, attack, params=params, labels=labels, target=target, roi=roi, seed=seed,
                         clean_output=clean_output)
        self.search = None

    def _open(self) -> None:
        if self.search is None:
            s = start_attack(self.image, self.model, self.attack, params=self.params, labels=self.labels,
                             target=self.target, roi=self.roi, seed=self.seed, clean_output=self.clean_output)
            self._on_start(s)
            self.search = s.attack.open_search(s.x, s.labels, target=s.target)

    def _settings(self, max_queries: int, max_pixels: int | None) -> None:
        atk = self.started.attack
        atk.max_queries, atk.max_pixels = int(max_queries), max_pixels  # what get_params records

    def steps(self, max_queries: int, max_pixels: int | None = None):
        """Continue to ``max_queries`` queries in all / a solution of ``max_pixels`` pixels at most;
        ``send(True)`` stops after the current solution (the search stays where it got)."""
        self._open()
        self._settings(max_queries, max_pixels)
        gen = self.search.advance(max_queries, max_pixels)
        try:
            for step in gen:
                if (yield step):
                    return
        finally:
            gen.close()

    @property
    def finished(self) -> bool:
        return self.search is not None and self.search.finished

    def outcome_at(self, max_queries: int, max_pixels: int | None = None) -> AttackOutcome | None:
        """The outcome a cold run with these settings gives (one forward for its prediction), or
        ``None`` when the search must go on to know it."""
        import torch

        if self.search is None:
            return None
        idx, known = self.search.point_for(max_queries, max_pixels)
        if not known:
            return None
        s, search = self.started, self.search
        self._settings(max_queries, max_pixels)
        point = None if idx is None else search.points[idx]
        upto = [p for p in search.points if p["queries"] <= max_queries]
        if idx is not None:
            upto = search.points[: idx + 1]
        history = [{"step": p["queries"], "loss": None, **search.record(p)} for p in upto]
        atk = s.attack
        result = AttackResult(
            attack=self.attack, clean=s.x, adversarial=search.image(point), eps=float(atk.eps),
            eps_native=search.ctx.range.eps_native_per_channel(atk.eps), params=atk.get_params(), history=history,
            n_forward=upto[-1]["queries"] if upto else 1, success=[point is not None],
            extra={"l0": [None if point is None else point["l0"]], "l0_history": [[p["l0"] for p in upto]],
                   "n_pixels": int(search.x[0, 0].numel()), "attacked_class": [search.state.attacked_class],
                   "amplitude": atk.amplitude})
        with torch.no_grad():
            return finish_outcome(s, self.image, self.model, self.attack, result, seed=self.seed, labels=self.labels)


class FramePacer:
    """When a running attack builds a frame: only when the front end wants one (``want``, set
    again once the previous frame is on screen: never a queue of frames) and while frames have
    cost at most ``share`` of the run's time so far (a label map and the readouts per frame must
    not slow the attack they show)."""

    def __init__(self, share: float = 0.05):
        self.share = float(share)
        self.want = threading.Event()
        self.want.set()
        self.spent = 0.0
        self.t0 = time.perf_counter()
        self.built = 0

    def due(self) -> bool:
        return self.want.is_set() and self.spent <= self.share * (time.perf_counter() - self.t0)

    def build(self, make: Callable[[], AttackOutcome | None]) -> AttackOutcome | None:
        t = time.perf_counter()
        frame = make()
        self.spent += time.perf_counter() - t
        if frame is not None:
            self.want.clear()
            self.built += 1
        return frame


def outcome_bytes(o: AttackOutcome) -> int:
    """Memory an outcome holds of its own (adversarial image, adversarial label map, outputs)."""
    n = o.adversarial.nbytes
    if o.seg_adv is not None:
        n += o.seg_adv.nbytes
    if o.adv_output is not None:
        n += o.adv_output.element_size() * o.adv_output.nelement()
    return int(n)


class EpsCache:
    """Finished results per ε under one key (image, model, attack and its other parameters,
    labels, region, target, seed): least recently used out beyond ``max_bytes``; a new key
    clears it."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.key: Hashable | None = None
        self._items: OrderedDict[float, AttackOutcome] = OrderedDict()
        self.nbytes = 0

    @staticmethod
    def _eps(eps: float) -> float:
        return round(float(eps), 6)  # slider values are exact to far fewer digits

    def __len__(self) -> int:
        return len(self._items)

    def use(self, key: Hashable) -> None:
        """Work under ``key``: a different key than the current one empties the cache."""
        if key != self.key:
            self.clear()
            self.key = key

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0

    def get(self, key: Hashable, eps: float) -> AttackOutcome | None:
        if key != self.key:
            return None
        o = self._items.get(self._eps(eps))
        if o is not None:
            self._items.move_to_end(self._eps(eps))
        return o

    def put(self, key: Hashable, eps: float, outcome: AttackOutcome) -> None:
        self.use(key)
        e = self._eps(eps)
        if e in self._items:
            self.nbytes -= outcome_bytes(self._items.pop(e))
        size = outcome_bytes(outcome)
        if size > self.max_bytes:
            return  # one result larger than the whole budget: not kept
        self._items[e] = outcome
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= outcome_bytes(old)

    def values(self) -> list[float]:
        return sorted(self._items)

    def nearest(self, key: Hashable, eps: float) -> AttackOutcome | None:
        """The cached result whose ε is closest to ``eps`` (a warm start), or None."""
        if key != self.key or not self._items:
            return None
        e = min(self._items, key=lambda v: (abs(v - eps), v))
        return self._items[e]
